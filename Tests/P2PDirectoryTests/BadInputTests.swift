import Foundation
import NIOCore
import NIOPosix
import P2PDirectory
import P2PProtocol
import P2PTestSupport
import Testing

/// PROTOCOL.md section 6: bad input gets the "other" code where possible, changes nothing,
/// and the server goes on serving. Serialized: the flood of connections in one test would
/// otherwise delay the others' requests past their deadline.
@Suite(.serialized) struct BadInputTests {
    static let dateTime = "25/11/2026 13:05:09"

    func withServer(_ body: (DirectoryHarness) async throws -> Void) async throws {
        let configuration = DirectoryServerConfiguration(
            host: "127.0.0.1", port: 0, idleTimeout: .seconds(3), maxConnections: 64)
        try await DirectoryHarness.with(configuration) { harness in
            try await body(harness)
            // After any bad input: a good request is still answered, and nothing was recorded.
            #expect(try await harness.send(.register(user: "after")) == .status(0))
            #expect(try await harness.store.registeredUsers() == ["after"])
            #expect(harness.operationLog.records.map(\.user) == ["after"])
        }
    }

    @Test func oversizedFieldGetsTheOtherCode() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            let bytes = RawConnection.fields("REGISTER", Self.dateTime, String(repeating: "x", count: 256))
            let reply = try await RawConnection.exchange(bytes, with: s.address)
            #expect(reply == Array("2\0".utf8))
        }
    }

    @Test func oversizedFieldWithoutNULIsCutShort() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            // 64 KiB with no NUL: the server answers once the field passes 255 bytes.
            let bytes = Array("PUBLISH\0".utf8) + Array(repeating: UInt8(ascii: "y"), count: 65536)
            let reply = try await RawConnection.exchange(bytes, with: s.address)
            #expect(reply == Array("4\0".utf8))
        }
    }

    @Test func unknownOperationIsClosedWithoutReply() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            let bytes = RawConnection.fields("SHUTDOWN", Self.dateTime, "alice")
            let reply = try await RawConnection.exchange(bytes, with: s.address)
            #expect(reply == [])
        }
    }

    @Test func garbageBytesAreClosedWithoutReply() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            var generator = SystemRandomNumberGenerator()
            let bytes = (0..<4096).map { _ in UInt8.random(in: 1...255, using: &generator) }
            let reply = try await RawConnection.exchange(bytes, with: s.address)
            #expect(reply == [])
        }
    }

    @Test func invalidUTF8GetsTheOtherCode() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            let bytes = Array("CONNECT\0\(Self.dateTime)\0".utf8) + [0xFF, 0xFE, 0]
            let reply = try await RawConnection.exchange(bytes, with: s.address)
            #expect(reply == Array("3\0".utf8))
        }
    }

    @Test func requestThatEndsEarlyGetsTheOtherCode() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            let bytes = RawConnection.fields("PUBLISH", Self.dateTime, "alice")
            let reply = try await RawConnection.exchange(bytes, with: s.address, halfClose: true)
            #expect(reply == Array("4\0".utf8))
        }
    }

    @Test func requestThatNeverCompletesTimesOut() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            // No half-close: the client just stops sending in the middle of a field.
            let bytes = Array("REGISTER\0\(Self.dateTime)\0ali".utf8)
            let reply = try await RawConnection.exchange(bytes, with: s.address)
            #expect(reply == Array("2\0".utf8))
        }
    }

    @Test func silentConnectionIsClosed() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            let reply = try await RawConnection.exchange([], with: s.address)
            #expect(reply == [])
        }
    }

    @Test func thousandsOfConnectionsAtOnce() async throws {
        try await withServer { (s: DirectoryHarness) async throws in
            // Far more than --max-connections (64 here): extra ones are closed, none crash it.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2000 {
                    group.addTask { _ = try? await RawConnection.exchange([], with: s.address) }
                }
                try await group.waitForAll()
            }
        }
    }
}
