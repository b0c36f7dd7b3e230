import Foundation
import NIOCore
import NIOPosix
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PDirectory

/// Issue 43: two accounts cannot hold every relay slot, and a slot nobody joins comes back.
@Suite struct RelayBoundsTests {
    static func hub(joinTimeout: Duration = .seconds(30)) -> RelayHub {
        RelayHub(
            settings: RelaySettings(
                bytesPerSecond: 1 << 20, maxTransfers: 8, maxTransfersPerUser: 2, joinTimeout: joinTimeout),
            metrics: .none, logger: .init(label: "relay-test"))
    }

    @Test func oneUserTakesPartInAtMostItsShareOfRelays() {
        let hub = Self.hub()
        #expect(hub.create(owner: "bob", downloader: "alice").code == 0)
        #expect(hub.create(owner: "bob", downloader: "alice").code == 0)
        // A third with alice, as downloader or as owner, is refused; others still get theirs.
        #expect(hub.create(owner: "bob", downloader: "alice").code == 2)
        #expect(hub.create(owner: "alice", downloader: "carol").code == 2)
        #expect(hub.create(owner: "dave", downloader: "carol").code == 0)
    }

    @Test func aRelayNobodyJoinsGivesItsSlotsBack() async throws {
        let hub = Self.hub(joinTimeout: .milliseconds(100))
        #expect(hub.create(owner: "bob", downloader: "alice").code == 0)
        #expect(hub.create(owner: "bob", downloader: "alice").code == 0)
        #expect(hub.create(owner: "bob", downloader: "alice").code == 2)
        try await waitUntil("alice's relays forgotten") { hub.create(owner: "erin", downloader: "alice").code == 0 }
    }

    /// A connection to the server that reads everything into `received` (what it got so far).
    final class Raw: Sendable {
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        let received = Locked<[UInt8]>([])
        let ended = Locked(false)
        private let reader: Task<Void, Never>

        init(to address: SocketAddress, sending fields: [String]) async throws {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(to: address) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            let (received, ended, channel) = (received, ended, channel)
            reader = Task {
                do {
                    for try await chunk in channel.inbound { received.withLock { $0 += chunk.readableBytesView } }
                } catch {}
                ended.withLock { $0 = true }
            }
            try await send(fields)
        }

        func send(_ fields: [String]) async throws {
            try await channel.outbound.write(ByteBuffer(bytes: fields.flatMap { Array($0.utf8) + [0] }))
        }

        /// The control messages after the CONTROL reply's code (two bytes: `0`, NUL).
        var messages: [ControlMessage] {
            var decoder = ControlMessageDecoder()
            var bytes = ByteBuffer(bytes: received.value.dropFirst(2))
            decoder.append(&bytes)
            var messages: [ControlMessage] = []
            while let message = try? decoder.next() { messages.append(message) }
            return messages
        }

        func close() async {
            try? await channel.channel.close()
            reader.cancel()
        }
    }

    /// A relay both sides joined and nobody sends through is cut after the idle timeout, and its
    /// slots come back.
    @Test func anIdleRelayIsCut() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let harness = try await DirectoryHarness(
            dataDirectory: folder.path,
            relay: RelaySettings(bytesPerSecond: 1 << 20, maxTransfersPerUser: 1, idleTimeout: .milliseconds(300)))
        let closed = try ClosedPort()
        let date = "07/12/2026 10:00:00"
        for user in ["owner", "downloader"] {
            #expect(await harness.store.apply(.register(user: user)) == .ok)
            #expect(await harness.store.apply(.connect(user: user, ip: "127.0.0.1", port: String(closed.port))) == .ok)
        }
        let owner = try await Raw(to: harness.address, sending: ["CONTROL", date, "owner"])
        let downloader = try await Raw(to: harness.address, sending: ["CONTROL", date, "downloader"])
        try await waitUntil("both control connections open") {
            owner.received.value.starts(with: Array("0\0".utf8))
                && downloader.received.value.starts(with: Array("0\0".utf8))
        }

        func relay(_ id: String) async throws -> String? {
            try await downloader.send(ControlMessage.relayRequest(id: id, owner: "owner").fields)
            var token: String?
            var code: Int?
            try await waitUntil("RELAYING \(id)") {
                for case .relayReply(id, let answer, let given) in downloader.messages {
                    code = answer
                    token = given
                }
                return code != nil
            }
            return code == 0 ? token : nil
        }
        let token = try #require(try await relay("r1"))
        // One relay per user here: a second one is refused while the first holds its slots.
        #expect(try await relay("r2") == nil)
        let sides = [
            try await Raw(to: harness.address, sending: ["RELAY", date, "owner", token]),
            try await Raw(to: harness.address, sending: ["RELAY", date, "downloader", token]),
        ]
        try await waitUntil("both sides joined") {
            sides.allSatisfy { $0.received.value.starts(with: Array("0\0".utf8)) }
        }
        // Nothing either way: both sides are cut, and the slots come back.
        try await waitUntil("the idle relay cut", timeout: 10) { sides.allSatisfy { $0.ended.value } }
        try await waitUntil("a relay again", timeout: 10) { try await relay("r\(UUID().uuidString.prefix(8))") != nil }

        for connection in sides + [owner, downloader] { await connection.close() }
        try await harness.shutdown()
    }
}
