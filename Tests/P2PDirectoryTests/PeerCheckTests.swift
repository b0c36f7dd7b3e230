import Foundation
import NIOCore
import NIOPosix
import P2PDirectory
import P2PProtocol
import P2PTestSupport
import Testing

/// Dead peers leave the directory: the server's peer checks with real sockets. Connected
/// users point at ports that refuse (`ClosedPort`), listen without ever accepting
/// (`SilentListener`, a live but slow peer) or serve (a real listener).
@Suite struct PeerCheckTests {
    /// Short rounds, so that a test takes about a second.
    static let fast = PeerCheckSettings(interval: .milliseconds(100), failuresToExpire: 2, timeout: .milliseconds(500))

    static func connected(_ harness: DirectoryHarness) async throws -> [String] {
        guard case .users(let users) = try await harness.send(.listUsers(user: "watcher")) else { return [] }
        return users.map(\.name)
    }

    @Test func deadPeerExpiresAndItsUserCanConnectAgain() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await DirectoryHarness(dataDirectory: folder.path, peerChecks: Self.fast)
        let slow = try SilentListener()
        // carol's peer lives until the test lets it die.
        var carolPeer: SilentListener? = try SilentListener()
        _ = try await server.send(.register(user: "watcher"))
        _ = try await server.send(.connect(user: "watcher", port: String(slow.port)))
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
        let alive = try SilentListener()
        #expect(try await server.send(.connect(user: "carol", port: String(alive.port))) == .status(0))
        // The watcher, alive but never accepting, stayed through every round.
        #expect(try await Self.connected(server) == ["carol", "watcher"])
        try await server.shutdown()
    }

    @Test func livePeerIsNeverExpired() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await DirectoryHarness(dataDirectory: folder.path, peerChecks: Self.fast)
        // A real peer that accepts and closes, and one that never accepts.
        let group = MultiThreadedEventLoopGroup.singleton
        let peer = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
        let slow = try SilentListener()
        let dead = try ClosedPort()
        _ = try await server.send(.register(user: "watcher"))
        _ = try await server.send(.connect(user: "watcher", port: String(slow.port)))
        _ = try await server.send(.register(user: "alive"))
        _ = try await server.send(.connect(user: "alive", port: String(peer.localAddress!.port!)))
        _ = try await server.send(.register(user: "dead"))
        _ = try await server.send(.connect(user: "dead", port: String(dead.port)))
        // Once the dead one is gone, several rounds have passed over the living.
        try await waitUntil("the dead peer expired") { try await Self.connected(server) == ["alive", "watcher"] }
        try await peer.close()
        try await server.shutdown()
    }

    /// Entries loaded from disk after a restart are checked like any other.
    @Test func restartedServerExpiresDeadEntriesFromDisk() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let dead = try ClosedPort()
        let slow = try SilentListener()
        let first = try await DirectoryHarness(dataDirectory: folder.path)
        _ = try await first.send(.register(user: "watcher"))
        _ = try await first.send(.connect(user: "watcher", port: String(slow.port)))
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
        let slow = try SilentListener()
        _ = try await server.send(.register(user: "watcher"))
        _ = try await server.send(.connect(user: "watcher", port: String(slow.port)))
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
