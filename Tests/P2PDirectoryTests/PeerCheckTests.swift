import Foundation
import NIOCore
import NIOPosix
@testable import P2PDirectory
import P2PProtocol
import P2PTestSupport
import Testing

/// Dead peers leave the directory: the server's peer checks with real sockets. Connected
/// users point at ports that refuse (`ClosedPort`), listen without ever accepting or answering
/// (`SilentListener`), or serve GET_FILE as the third-party Python peers do (`FragilePeer`,
/// which stalls for good on a connection that ends before a request).
@Suite struct PeerCheckTests {
    /// Short rounds, so that a test takes about a second.
    static let fast = PeerCheckSettings(interval: .milliseconds(100), failuresToExpire: 2, timeout: .milliseconds(500))

    static func connected(_ harness: DirectoryHarness, asking requester: String = "watcher") async throws -> [String] {
        guard case .users(let users) = try await harness.send(.listUsers(user: requester)) else { return [] }
        return users.map(\.name)
    }

    @Test func deadPeerExpiresAndItsUserCanConnectAgain() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await DirectoryHarness(dataDirectory: folder.path, peerChecks: Self.fast)
        let watcher = try FragilePeer()
        // carol's peer lives until the test lets it die.
        var carolPeer: FragilePeer? = try FragilePeer()
        _ = try await server.send(.register(user: "watcher"))
        _ = try await server.send(.connect(user: "watcher", port: String(watcher.port)))
        _ = try await server.send(.register(user: "carol"))
        _ = try await server.send(.connect(user: "carol", port: String(carolPeer!.port)))
        #expect(try await server.send(.connect(user: "carol", port: "4000")) == .status(2))
        #expect(try await server.send(.publish(user: "carol", fileName: "kept.txt", description: "d")) == .status(0))
        carolPeer = nil

        try await waitUntil("carol expired") { try await Self.connected(server) == ["watcher"] }
        // Exactly as DISCONNECT: files kept, can connect again at once; recorded once.
        #expect(
            try await server.send(.listContent(user: "watcher", owner: "carol"))
                == .content([PublishedFile(name: "kept.txt", description: "d")]))
        #expect(server.operationLog.records.filter { $0.operation == "EXPIRE" }.map(\.user) == ["carol"])
        let record = try #require(server.operationLog.records.last { $0.operation == "EXPIRE" })
        #expect(DateTimeFormat.isValid(record.dateTime))
        let alive = try FragilePeer()
        #expect(try await server.send(.connect(user: "carol", port: String(alive.port))) == .status(0))
        // The watcher, answering every check, stayed through every round, unharmed.
        #expect(try await Self.connected(server) == ["carol", "watcher"])
        #expect(watcher.seen.spins == 0 && !watcher.seen.stoppedServing)
        try await server.shutdown()
    }

    @Test func livePeerIsNeverExpiredAndPeersThatDoNotAnswerAre() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await DirectoryHarness(dataDirectory: folder.path, peerChecks: Self.fast)
        // A peer that answers; one that refuses; one that accepts (through the kernel's
        // backlog) but never answers; one that accepts and closes without a reply.
        let alive = try FragilePeer()
        let dead = try ClosedPort()
        let silent = try SilentListener()
        let closer = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { $0.close() }
            .bind(host: "127.0.0.1", port: 0).get()
        for (user, port) in [
            ("alive", alive.port), ("dead", dead.port), ("silent", silent.port), ("closer", closer.localAddress!.port!),
        ] {
            _ = try await server.send(.register(user: user))
            _ = try await server.send(.connect(user: user, port: String(port)))
        }
        try await waitUntil("the peers that do not answer expired") {
            try await Self.connected(server, asking: "alive") == ["alive"]
        }
        #expect(alive.seen.requests.count >= 2)
        try await closer.close()
        try await server.shutdown()
    }

    /// The checks send a complete request the third-party peers answer, and read the answer
    /// before closing: after many rounds such a peer has never stalled and still serves files.
    @Test func thirdPartyPeerSurvivesManyChecks() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let settings = PeerCheckSettings(interval: .milliseconds(20), failuresToExpire: 2, timeout: .milliseconds(500))
        let server = try await DirectoryHarness(dataDirectory: folder.path, peerChecks: settings)
        let content = Array("lecture notes\n".utf8)
        let peer = try FragilePeer(files: ["notes.txt": content])
        _ = try await server.send(.register(user: "python"))
        _ = try await server.send(.connect(user: "python", port: String(peer.port)))
        try await waitUntil("50 checks answered") { peer.seen.requests.count >= 50 }
        let seen = peer.seen
        #expect(seen.spins == 0)
        #expect(seen.sendFailures == 0)
        #expect(!seen.stoppedServing)
        #expect(Set(seen.requests) == [ReservedFileName.peerCheck])
        // Still serving, still listed.
        let request = Array("GET_FILE\0notes.txt\0".utf8)
        #expect(try exchangeBytes(port: peer.port, sending: request) == Array("0\0".utf8) + content)
        #expect(try await Self.connected(server, asking: "python") == ["python"])
        #expect(server.operationLog.records.filter { $0.operation == "EXPIRE" }.isEmpty)
        try await server.shutdown()
        #expect(peer.seen.spins == 0 && !peer.seen.stoppedServing)
    }

    /// The stand-in is as fragile as the peers it stands for: the old check (a connection that
    /// ends without a byte) stalls it for good.
    @Test func anEmptyConnectionStallsTheStandIn() async throws {
        let peer = try FragilePeer(files: ["notes.txt": Array("x".utf8)])
        #expect(try exchangeBytes(port: peer.port, sending: []) == [])
        try await waitUntil("the stand-in stalled") { peer.seen.stoppedServing }
        #expect(peer.seen.spins > 0)
    }

    /// Entries loaded from disk after a restart are checked like any other.
    @Test func restartedServerExpiresDeadEntriesFromDisk() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let dead = try ClosedPort()
        let watcher = try FragilePeer()
        let first = try await DirectoryHarness(dataDirectory: folder.path)
        _ = try await first.send(.register(user: "watcher"))
        _ = try await first.send(.connect(user: "watcher", port: String(watcher.port)))
        _ = try await first.send(.register(user: "carol"))
        _ = try await first.send(.connect(user: "carol", port: String(dead.port)))
        try await first.shutdown()

        let second = try await DirectoryHarness(dataDirectory: folder.path, peerChecks: Self.fast)
        #expect(try await Self.connected(second) == ["carol", "watcher"])
        try await waitUntil("carol expired after the restart") { try await Self.connected(second) == ["watcher"] }
        try await second.shutdown()
    }

    @Test func thousandDeadPeersAreAllExpiredWithinTheBound() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let settings = PeerCheckSettings(interval: .milliseconds(200), failuresToExpire: 3, timeout: .milliseconds(500))
        let server = try await DirectoryHarness(dataDirectory: folder.path, peerChecks: settings)
        let watcher = try FragilePeer()
        _ = try await server.send(.register(user: "watcher"))
        _ = try await server.send(.connect(user: "watcher", port: String(watcher.port)))
        let dead = try (0..<8).map { _ in try ClosedPort() }
        var changes: [DirectoryChange] = []
        for index in 0..<1000 {
            changes.append(.register(user: "user\(index)"))
            changes.append(.connect(user: "user\(index)", ip: "127.0.0.1", port: String(dead[index % 8].port)))
        }
        #expect(await server.store.apply(changes).allSatisfy { $0 == .ok })
        let start = ContinuousClock.now
        // The bound: interval x failures, plus a round's own time.
        try await waitUntil("1000 users expired", timeout: 10) { try await Self.connected(server) == ["watcher"] }
        let took = ContinuousClock.now - start
        #expect(took < .seconds(5), "took \(took)")
        #expect(server.operationLog.records.filter { $0.operation == "EXPIRE" }.count == 1000)
        try await server.shutdown()
    }
}

/// Peer checks reach a user recorded at an IPv6 address.
@Suite struct IPv6PeerCheckTests {
    static let available: Bool = {
        let descriptor = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return false }
        close(descriptor)
        return (try? SocketAddress(ipAddress: "::1", port: 0)) != nil
    }()

    @Test(.enabled(if: available, "needs IPv6"))
    func aPeerOnTheIPv6LoopbackAnswersAndAClosedPortDoesNot() async throws {
        // A peer that answers every GET_FILE with 1 (no such file), on ::1.
        let peer = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AnswerOnceHandler())
                }
            }
            .bind(host: "::1", port: 0).get()
        let closedPort = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "::1", port: 0).get()
        let unused = closedPort.localAddress!.port!
        try await closedPort.close()
        let answers = await PeerProbe.run(
            [.init(ip: "::1", port: String(peer.localAddress!.port!)), .init(ip: "::1", port: String(unused))],
            timeout: .seconds(5), concurrency: 2, slice: .zero, perSlice: 2, shouldStop: { false })
        #expect(answers == [true, false])
        try await peer.close()
    }

    /// Answers `1` once the request's two fields have come, then closes.
    final class AnswerOnceHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        private var nuls = 0

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            nuls += unwrapInboundIn(data).readableBytesView.filter { $0 == 0 }.count
            if nuls == 2 {
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: [UInt8(ascii: "1"), 0]))).whenComplete { _ in
                    channel.close(promise: nil)
                }
            }
        }
    }
}
