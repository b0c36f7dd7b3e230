import Foundation
import NIOCore
import P2PDirectory
import P2POperationLog
import P2PProtocol
import P2PTestSupport
import Testing

/// The directory server in this process on 127.0.0.1:0 with a real SQLite file, driven by
/// real sockets.
@Suite struct DirectoryServerTests {
    @Test func registerAndUnregister() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            #expect(try await s.send(.register(user: "alice")) == .status(0))
            #expect(try await s.send(.register(user: "alice")) == .status(1), "already registered")
            #expect(try await s.send(.register(user: "")) == .status(2), "an empty name is an error")
            #expect(try await s.send(.unregister(user: "alice")) == .status(0))
            #expect(try await s.send(.unregister(user: "alice")) == .status(1), "no such user")
        }
    }

    /// Some clients shut down their sending side right after the request; the reply, which
    /// comes only after the commit, must still reach them.
    @Test func clientThatHalfClosesAfterItsRequestGetsTheReply() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            let bytes = RawConnection.fields("REGISTER", "25/11/2026 13:05:09", "alice")
            let reply = try await RawConnection.exchange(bytes, with: s.address, halfClose: true)
            #expect(reply == Array("0\0".utf8))
            #expect(try await s.store.registeredUsers() == ["alice"])
        }
    }

    @Test func connectAndDisconnect() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            #expect(try await s.send(.connect(user: "alice", port: "4000")) == .status(1), "no such user")
            #expect(try await s.send(.disconnect(user: "alice")) == .status(1), "no such user")
            _ = try await s.send(.register(user: "alice"))
            #expect(try await s.send(.disconnect(user: "alice")) == .status(2), "not connected")
            for badPort in ["0", "65536", "port", "-1", "", "40 00"] {
                #expect(try await s.send(.connect(user: "alice", port: badPort)) == .status(3), "port \(badPort)")
            }
            #expect(try await s.send(.connect(user: "alice", port: "4000")) == .status(0))
            #expect(try await s.send(.connect(user: "alice", port: "4001")) == .status(2), "already connected")
            #expect(try await s.send(.disconnect(user: "alice")) == .status(0))
            #expect(try await s.send(.connect(user: "alice", port: "4001")) == .status(0), "reconnect")
        }
    }

    @Test func publishAndDelete() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            #expect(try await s.send(.publish(user: "alice", fileName: "f", description: "d")) == .status(1))
            #expect(try await s.send(.delete(user: "alice", fileName: "f")) == .status(1))
            _ = try await s.send(.register(user: "alice"))
            #expect(try await s.send(.publish(user: "alice", fileName: "f", description: "d")) == .status(2))
            #expect(try await s.send(.delete(user: "alice", fileName: "f")) == .status(2))
            _ = try await s.send(.connect(user: "alice", port: "4000"))
            #expect(try await s.send(.delete(user: "alice", fileName: "f")) == .status(3), "not published")
            #expect(try await s.send(.publish(user: "alice", fileName: "f", description: "d")) == .status(0))
            #expect(try await s.send(.publish(user: "alice", fileName: "f", description: "x")) == .status(3))
            #expect(try await s.send(.publish(user: "alice", fileName: "", description: "x")) == .status(4))
            #expect(try await s.send(.delete(user: "alice", fileName: "f")) == .status(0))
            #expect(try await s.send(.delete(user: "alice", fileName: "f")) == .status(3))
        }
    }

    @Test func listUsersReportsConnectedUsersWithThePeerAddress() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            #expect(try await s.send(.listUsers(user: "alice")) == .status(1))
            _ = try await s.send(.register(user: "alice"))
            #expect(try await s.send(.listUsers(user: "alice")) == .status(2))
            _ = try await s.send(.register(user: "bob"))
            _ = try await s.send(.register(user: "carol"))
            _ = try await s.send(.connect(user: "alice", port: "4000"))
            _ = try await s.send(.connect(user: "bob", port: "5000"))
            // carol stays disconnected and is not listed.
            #expect(
                try await s.send(.listUsers(user: "bob"))
                    == .users([
                        ConnectedUser(name: "alice", ip: "127.0.0.1", port: "4000"),
                        ConnectedUser(name: "bob", ip: "127.0.0.1", port: "5000"),
                    ]))
        }
    }

    @Test func listContentReportsFilesInPublishOrder() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            #expect(try await s.send(.listContent(user: "alice", owner: "bob")) == .status(1))
            _ = try await s.send(.register(user: "alice"))
            #expect(try await s.send(.listContent(user: "alice", owner: "bob")) == .status(2))
            _ = try await s.send(.connect(user: "alice", port: "4000"))
            #expect(try await s.send(.listContent(user: "alice", owner: "bob")) == .status(3))
            _ = try await s.send(.register(user: "bob"))
            #expect(try await s.send(.listContent(user: "alice", owner: "bob")) == .content([]))
            _ = try await s.send(.connect(user: "bob", port: "4001"))
            _ = try await s.send(.publish(user: "bob", fileName: "zeta.txt", description: "last letter"))
            _ = try await s.send(.publish(user: "bob", fileName: "alpha.txt", description: "first letter"))
            _ = try await s.send(.disconnect(user: "bob"))
            // Files stay listed after their owner disconnects.
            #expect(
                try await s.send(.listContent(user: "alice", owner: "bob"))
                    == .content([
                        PublishedFile(name: "zeta.txt", description: "last letter"),
                        PublishedFile(name: "alpha.txt", description: "first letter"),
                    ]))
            // UNREGISTER of a connected user removes it and its files.
            _ = try await s.send(.connect(user: "bob", port: "4001"))
            #expect(try await s.send(.unregister(user: "bob")) == .status(0))
            _ = try await s.send(.register(user: "bob"))
            #expect(try await s.send(.listContent(user: "alice", owner: "bob")) == .content([]))
        }
    }

    @Test func everyServedRequestIsRecordedOnceWithItsDateTimeAndFile() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            _ = try await s.send(.register(user: "alice"), dateTime: "01/02/2026 03:04:05")
            _ = try await s.send(.register(user: "alice"), dateTime: "01/02/2026 03:04:06")
            _ = try await s.send(.connect(user: "alice", port: "4000"), dateTime: "01/02/2026 03:04:07")
            _ = try await s.send(
                .publish(user: "alice", fileName: "a.txt", description: "A"), dateTime: "01/02/2026 03:04:08")
            _ = try await s.send(.listContent(user: "alice", owner: "nobody"), dateTime: "01/02/2026 03:04:09")
            _ = try await s.send(.delete(user: "alice", fileName: "a.txt"), dateTime: "01/02/2026 03:04:10")
            #expect(
                s.operationLog.records.map(\.logLine) == [
                    "alice REGISTER 01/02/2026 03:04:05",
                    "alice REGISTER 01/02/2026 03:04:06",
                    "alice CONNECT 01/02/2026 03:04:07",
                    "alice PUBLISH a.txt 01/02/2026 03:04:08",
                    "alice LIST_CONTENT 01/02/2026 03:04:09",
                    "alice DELETE a.txt 01/02/2026 03:04:10",
                ])
        }
    }

    @Test func rawByteResultCodes() async throws {
        try await DirectoryHarness.with(.init(host: "127.0.0.1", port: 0, codeEncoding: .byte)) {
            (s: DirectoryHarness) async throws in
            let register = RawConnection.fields("REGISTER", "25/11/2026 13:05:09", "alice")
            #expect(try await RawConnection.exchange(register, with: s.address) == [0])
            #expect(try await RawConnection.exchange(register, with: s.address) == [1])
        }
    }

    @Test func requestSplitIntoSingleBytesIsServed() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            let bytes = RawConnection.fields("REGISTER", "25/11/2026 13:05:09", "alice")
            #expect(try await RawConnection.exchange(bytes, with: s.address, chunkSize: 1) == Array("0\0".utf8))
        }
    }

    @Test func directorySurvivesARestartOnTheSameDataFolder() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let first = try await DirectoryHarness(dataDirectory: folder.path)
        _ = try await first.send(.register(user: "alice"))
        _ = try await first.send(.register(user: "bob"))
        _ = try await first.send(.connect(user: "alice", port: "4000"))
        _ = try await first.send(.publish(user: "alice", fileName: "a.txt", description: "kept"))
        try await first.shutdown()

        let second = try await DirectoryHarness(dataDirectory: folder.path)
        #expect(try await second.send(.register(user: "bob")) == .status(1))
        #expect(
            try await second.send(.listUsers(user: "alice"))
                == .users([ConnectedUser(name: "alice", ip: "127.0.0.1", port: "4000")]))
        #expect(
            try await second.send(.listContent(user: "alice", owner: "alice"))
                == .content([PublishedFile(name: "a.txt", description: "kept")]))
        try await second.shutdown()
    }

    /// 200 clients at once from one address (a lecture hall behind one NAT): all served, within
    /// the default per-address limit (256).
    @Test func concurrentRegistrationsOfDistinctNamesAreAllKept() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            let codes = try await withThrowingTaskGroup(of: ResultCode.self) { group in
                for index in 0..<200 {
                    group.addTask { try await s.send(.register(user: "user\(index)")).code }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(codes.count == 200)
            #expect(codes.allSatisfy { $0 == .ok })
            #expect(try await s.store.registeredUsers().count == 200)
        }
    }

    @Test func concurrentRegistrationsOfOneNameGiveExactlyOneSuccess() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            let codes = try await withThrowingTaskGroup(of: ResultCode.self) { group in
                for _ in 0..<200 {
                    group.addTask { try await s.send(.register(user: "same")).code }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(codes.filter { $0 == 0 }.count == 1)
            #expect(codes.filter { $0 == 1 }.count == 199)
            #expect(try await s.store.registeredUsers() == ["same"])
        }
    }

    /// A connected user is changed only from the address it connected from; another machine
    /// (here 127.0.0.2) gets each operation's "other" code and changes nothing.
    @Test func ownerCheckRefusesChangesFromAnotherAddress() async throws {
        try await DirectoryHarness.with { (s: DirectoryHarness) async throws in
            _ = try await s.send(.register(user: "bob"))
            _ = try await s.send(.register(user: "alice"))
            #expect(try await s.send(.connect(user: "bob", port: "5000")) == .status(0))
            _ = try await s.send(.connect(user: "alice", port: "6000"), from: "127.0.0.2")
            #expect(try await s.send(.publish(user: "bob", fileName: "f", description: "d")) == .status(0))
            let other = "127.0.0.2"
            #expect(try await s.send(.disconnect(user: "bob"), from: other) == .status(3))
            #expect(try await s.send(.unregister(user: "bob"), from: other) == .status(2))
            #expect(try await s.send(.publish(user: "bob", fileName: "g", description: "x"), from: other) == .status(4))
            #expect(try await s.send(.delete(user: "bob", fileName: "f"), from: other) == .status(4))
            #expect(
                try await s.send(.listUsers(user: "alice"), from: other)
                    == .users([
                        ConnectedUser(name: "alice", ip: "127.0.0.2", port: "6000"),
                        ConnectedUser(name: "bob", ip: "127.0.0.1", port: "5000"),
                    ]))
            #expect(
                try await s.send(.listContent(user: "alice", owner: "bob"), from: other)
                    == .content([PublishedFile(name: "f", description: "d")]))
            // From its own address everything works.
            #expect(try await s.send(.delete(user: "bob", fileName: "f")) == .status(0))
            #expect(try await s.send(.disconnect(user: "bob")) == .status(0))
            // Not connected: no address, so no check.
            #expect(try await s.send(.unregister(user: "bob"), from: other) == .status(0))
        }
    }

    @Test func ownerCheckOffAcceptsChangesFromAnywhere() async throws {
        try await DirectoryHarness.with(.init(host: "127.0.0.1", port: 0, ownerCheck: false)) {
            (s: DirectoryHarness) async throws in
            _ = try await s.send(.register(user: "bob"))
            _ = try await s.send(.connect(user: "bob", port: "5000"))
            #expect(
                try await s.send(.publish(user: "bob", fileName: "g", description: "x"), from: "127.0.0.2")
                    == .status(0))
            #expect(try await s.send(.delete(user: "bob", fileName: "g"), from: "127.0.0.2") == .status(0))
            #expect(try await s.send(.disconnect(user: "bob"), from: "127.0.0.2") == .status(0))
        }
    }
}
