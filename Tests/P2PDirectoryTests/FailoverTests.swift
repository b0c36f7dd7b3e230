import Foundation
import NIOCore
import P2PDirectoryPostgres
import P2PNetworkSupport
import P2PProtocol
import P2PTestSupport
import Testing

/// Three `p2p-server` processes on the database tier of `make run-cluster` (two PostgreSQL
/// nodes under Patroni, a synchronous replica, HAProxy in front of the primary), with
/// REGISTERs and PUBLISHes streaming through them while a node's machine is lost: nothing
/// answered 0 is missing afterwards, the servers answer error codes meanwhile (never hang), and
/// they serve again by themselves.
@Suite(.serialized) struct FailoverTests {
    /// How long a request may go unanswered before the test calls it hung (the store's own
    /// deadline is 2 s).
    static let hangLimit: Duration = .seconds(10)
    /// The service must be back this soon after the primary's machine is lost.
    static let recoveryLimit: Duration = .seconds(15)

    @Test func losingThePrimaryLosesNothingAcknowledged() async throws {
        try await withTier { cluster, servers, database in
            let load = try await WriteLoad.start(servers: servers.map(\.port), writers: 6)
            try await load.waitForAcknowledged(300)

            // PostgreSQL alone killed on the primary: Patroni starts it again in place.
            let first = try #require(try await cluster.primary())
            let crash = ContinuousClock.now
            try cluster.killPostgres(of: first)
            let restarted = try await load.waitForRecovery(after: crash)
            #expect(try await cluster.primary() == first, "Patroni should restart its PostgreSQL in place")

            // The primary's machine lost: its Patroni and its PostgreSQL together.
            try await cluster.waitForSynchronousStandby()
            let other = first == 1 ? 2 : 1
            let lost = try await cluster.killNode(first)
            let failedOver = try await load.waitForRecovery(after: lost)
            #expect(try await cluster.primary() == other)
            let outcomes = await load.stop()

            let acknowledged = outcomes.filter { $0.code == 0 }.map(\.key)
            let hung = outcomes.filter { $0.hung }
            print(
                "failover: \(outcomes.count) requests, \(acknowledged.count) acknowledged; PostgreSQL restarted in "
                    + "place: served again after \(restarted); primary's machine lost: after \(failedOver); "
                    + "slowest answer \(outcomes.map(\.took).max() ?? .zero)")
            #expect(hung.isEmpty, "\(hung.count) requests got no answer within \(Self.hangLimit)")
            #expect(failedOver < Self.recoveryLimit, "served again only \(failedOver) after the primary was lost")
            let missing = Set(acknowledged).subtracting(
                try await load.present(in: cluster, database: database, node: other))
            #expect(missing.isEmpty, "acknowledged but lost: \(missing.sorted().prefix(10)) (\(missing.count))")

            // The lost machine comes back: it rejoins as the synchronous replica, with everything.
            try cluster.startNode(first)
            try await cluster.waitForSynchronousStandby(timeout: 120)
            try await waitUntil("the rejoined node to have every acknowledged change", timeout: 30) {
                Set(acknowledged).isSubset(of: try await load.present(in: cluster, database: database, node: first))
            }
            #expect(try await SeveralServersTests.send(.register(user: "after"), to: servers[0].port) == .status(0))
        }
    }

    @Test func theReplicaKilledAndBroughtBack() async throws {
        try await withTier { cluster, servers, database in
            let load = try await WriteLoad.start(servers: servers.map(\.port), writers: 6)
            try await load.waitForAcknowledged(300)
            let primary = try #require(try await cluster.primary())
            let replica = primary == 1 ? 2 : 1
            let lost = try await cluster.killNode(replica)
            // Non-strict synchronous mode: the primary goes on alone once Patroni has dropped
            // the lost standby (within a loop of 1 s). Meanwhile commits wait for the replica.
            _ = try await load.waitForRecovery(after: lost)
            let alone = load.longestPause(around: lost)
            #expect(alone < .seconds(5), "writes stalled \(alone) after the replica was lost")
            try cluster.startNode(replica)
            try await cluster.waitForSynchronousStandby(timeout: 120)
            try await load.waitForAcknowledged(load.acknowledgedCount + 100)
            let outcomes = await load.stop()
            let acknowledged = Set(outcomes.filter { $0.code == 0 }.map(\.key))
            print("replica lost: writes paused at most \(alone); \(acknowledged.count) acknowledged")
            #expect(outcomes.allSatisfy { !$0.hung })
            #expect(try await cluster.primary() == primary)
            // What the primary acknowledged alone reached the replica once it was back.
            try await waitUntil("the replica to have every acknowledged change", timeout: 30) {
                acknowledged.isSubset(of: try await load.present(in: cluster, database: database, node: replica))
            }
        }
    }

    /// Starts the tier and three servers on it, runs `body`, and stops everything whatever
    /// happened.
    private func withTier(
        _ body: (PatroniCluster, [ServerProcess], String) async throws -> Void
    ) async throws {
        let cluster = try await PatroniCluster.start()
        let folder = try TemporaryDirectory()
        var servers: [ServerProcess] = []
        let result: Result<Void, any Error>
        do {
            let url = try await cluster.newDatabase()
            for index in 0..<3 {
                servers.append(
                    try await ServerProcess(
                        dataDirectory: folder.file("unused-\(index)"),
                        arguments: ["--no-oplog", "--peer-check-interval", "0", "--store", url.connectionString]))
            }
            try await body(cluster, servers, url.database)
            result = .success(())
        } catch {
            result = .failure(error)
            print(cluster.recentLogs())
            for server in servers {
                print(
                    """
                    server \(server.port): \(server.process.stdoutLines.suffix(5)) \
                    \(server.process.stderrLines.suffix(10))
                    """
                )
            }
        }
        for server in servers { await server.stop() }
        await cluster.stop()
        folder.remove()
        try result.get()
    }
}

/// Writers streaming REGISTERs and PUBLISHes through the servers, each request's outcome kept.
final class WriteLoad: Sendable {
    struct Outcome: Sendable {
        /// `user:NAME` for a REGISTER, `file:OWNER/NAME` for a PUBLISH.
        var key: String
        /// nil: no reply (connection failed, or no answer within the hang limit).
        var code: ResultCode?
        var hung: Bool
        var sent: ContinuousClock.Instant
        var took: Duration
    }

    private let outcomes = Locked<[Outcome]>([])
    private let stopping = Locked(false)
    private let tasks = Locked<[Task<Void, Never>]>([])

    var acknowledgedCount: Int { outcomes.withLock { $0.filter { $0.code == 0 }.count } }

    /// Each writer registers and connects an owner of its own, then alternates REGISTER of a
    /// new user and PUBLISH of a new file, round robin over `servers`.
    static func start(servers: [Int], writers: Int) async throws -> WriteLoad {
        let load = WriteLoad()
        let run = UUID().uuidString.prefix(8)
        for writer in 0..<writers {
            let owner = "owner-\(run)-\(writer)"
            #expect(try await SeveralServersTests.send(.register(user: owner), to: servers[0]) == .status(0))
            #expect(try await SeveralServersTests.send(.connect(user: owner, port: "9"), to: servers[0]) == .status(0))
            let task = Task {
                var index = 0
                while !load.stopping.value {
                    let port = servers[(writer + index) % servers.count]
                    let name = "w\(writer)-\(index)"
                    let (command, key): (Request.Command, String) =
                        index % 2 == 0
                        ? (.register(user: "\(run)-\(name)"), "user:\(run)-\(name)")
                        : (.publish(user: owner, fileName: name, description: "d"), "file:\(owner)/\(name)")
                    await load.send(command, key: key, to: port)
                    index += 1
                }
            }
            load.tasks.withLock { $0.append(task) }
        }
        return load
    }

    struct NoReply: Error {}

    private func send(_ command: Request.Command, key: String, to port: Int) async {
        let sent = ContinuousClock.now
        var code: ResultCode?
        var hung = false
        do {
            code = try await withTimeout(FailoverTests.hangLimit, error: NoReply()) {
                try await SeveralServersTests.send(command, to: port).code
            }
        } catch is NoReply {
            hung = true
        } catch {
            // Refused or reset: counted as not acknowledged; a short pause so that a writer
            // does not spin while a server is unreachable.
            try? await Task.sleep(for: .milliseconds(20))
        }
        let outcome = Outcome(key: key, code: code, hung: hung, sent: sent, took: .now - sent)
        outcomes.withLock { $0.append(outcome) }
    }

    func waitForAcknowledged(_ count: Int, timeout: Double = 60) async throws {
        try await waitUntil("\(count) acknowledged changes (have \(acknowledgedCount))", timeout: timeout) {
            acknowledgedCount >= count
        }
    }

    /// Waits until 50 requests sent after `event` were answered 0; returns how long after
    /// `event` the first of them was answered.
    func waitForRecovery(after event: ContinuousClock.Instant, timeout: Double = 60) async throws -> Duration {
        func since() -> [Outcome] { outcomes.withLock { $0.filter { $0.sent > event && $0.code == 0 } } }
        func summary() -> String {
            let after = outcomes.withLock { $0.filter { $0.sent > event } }
            let codes = Dictionary(grouping: after, by: { $0.code.map { "\($0)" } ?? ($0.hung ? "hung" : "no reply") })
            return "requests to succeed again (since then: \(codes.mapValues(\.count)))"
        }
        do {
            try await waitUntil("requests to succeed again", timeout: timeout) { since().count >= 50 }
        } catch {
            throw DeadlineExceeded(what: summary())
        }
        return since().map { $0.sent + $0.took - event }.min()!
    }

    /// The longest time without an acknowledgement from 1 s before `event` until the last one
    /// so far.
    func longestPause(around event: ContinuousClock.Instant) -> Duration {
        let answered = outcomes.withLock { $0.filter { $0.code == 0 }.map { $0.sent + $0.took } }
            .filter { $0 > event - .seconds(1) }.sorted()
        return zip(answered, answered.dropFirst()).map { $1 - $0 }.max() ?? .zero
    }

    /// Stops the writers and returns every outcome.
    func stop() async -> [Outcome] {
        stopping.withLock { $0 = true }
        for task in tasks.value { await task.value }
        return outcomes.value
    }

    /// The keys of every user and file in the database, read on `node` directly.
    func present(in cluster: PatroniCluster, database: String, node: Int) async throws -> Set<String> {
        let users = try await cluster.psql("SELECT 'user:' || name FROM directory_user", database: database, node: node)
        let files = try await cluster.psql(
            "SELECT 'file:' || owner || '/' || name FROM directory_file", database: database, node: node)
        return Set(users + files)
    }
}
