import Foundation
import P2PDirectoryPostgres

/// The database tier of `make run-cluster` for the tests: etcd, two PostgreSQL nodes under
/// Patroni with a synchronous replica and HAProxy in front of the primary, all configured by
/// `scripts/pg-ha.sh` in a temporary folder on free ports. Each program is a child process of
/// the test, so that a test can kill one node's "machine" (its Patroni and its PostgreSQL) and
/// start it again.
public final class PatroniCluster: Sendable {
    /// Where clients connect: HAProxy, forwarding to the primary.
    public let port: Int
    public let folder: TemporaryDirectory
    /// PostgreSQL's port of node 1 and node 2 (index 0 and 1).
    public let nodePorts: [Int]
    private let etcd: ChildProcess
    private let proxy: ChildProcess
    private let nodes = Locked<[Int: ChildProcess]>([:])
    private let databases = Locked(0)

    private static var script: String { "\(packageRoot)/scripts/pg-ha.sh" }

    private init(port: Int, folder: TemporaryDirectory, nodePorts: [Int], etcd: ChildProcess, proxy: ChildProcess) {
        self.port = port
        self.folder = folder
        self.nodePorts = nodePorts
        self.etcd = etcd
        self.proxy = proxy
    }

    /// Configures and starts the whole tier, and waits until node 1 is the primary and node 2
    /// its synchronous standby.
    public static func start() async throws -> PatroniCluster {
        for program in ["/usr/bin/patroni", "/usr/bin/etcd", "/usr/sbin/haproxy"] {
            guard FileManager.default.isExecutableFile(atPath: program) else {
                throw SetupError("\(program) is missing: run ./setup.sh (make test does)")
            }
        }
        let folder = try TemporaryDirectory("p2p-patroni")
        let names = ["PG_PORT", "ETCD_PORT", "ETCD_PEER_PORT", "NODE1_PORT", "NODE2_PORT", "REST1_PORT", "REST2_PORT"]
        var ports: [String: Int] = [:]
        for name in names { ports[name] = try unusedPort() }
        let configure = try ChildProcess(
            script, ["configure", folder.path], environment: ports.mapValues { String($0) })
        guard try await configure.waitForExit(timeout: 30) == 0 else {
            throw SetupError("pg-ha.sh configure: \(configure.stderrLines.suffix(5))")
        }
        let etcd = try ChildProcess(script, ["etcd", folder.path])
        let proxy = try ChildProcess(script, ["proxy", folder.path])
        let cluster = PatroniCluster(
            port: ports["PG_PORT"]!, folder: folder, nodePorts: [ports["NODE1_PORT"]!, ports["NODE2_PORT"]!],
            etcd: etcd, proxy: proxy)
        do {
            try await waitUntil("etcd on \(ports["ETCD_PORT"]!)", timeout: 30) {
                guard etcd.isRunning else { throw SetupError("etcd exited: \(etcd.stderrLines.suffix(5))") }
                return isListening(ports["ETCD_PORT"]!)
            }
            // Node 1 first, so that it bootstraps the cluster and is the primary.
            try cluster.startNode(1)
            try await waitUntil("node 1 to be the primary", timeout: 120) { try await cluster.primary() == 1 }
            try cluster.startNode(2)
            try await cluster.waitForSynchronousStandby(timeout: 120)
        } catch {
            await cluster.stop()
            throw error
        }
        return cluster
    }

    /// Starts Patroni for `node` (1 or 2); it starts its PostgreSQL.
    public func startNode(_ node: Int) throws {
        let process = try ChildProcess(Self.script, ["node", folder.path, String(node)])
        nodes.withLock { $0[node] = process }
    }

    /// The node whose Patroni says it is the primary, if any.
    public func primary() async throws -> Int? {
        let run = try ChildProcess(Self.script, ["primary", folder.path])
        guard try await run.waitForExit(timeout: 10) == 0 else { return nil }
        return run.stdoutLines.first.flatMap { Int($0) }
    }

    /// The node Patroni holds to be the synchronous standby (the only one it would promote).
    public func synchronousStandby() async throws -> Int? {
        let run = try ChildProcess(Self.script, ["sync", folder.path])
        guard try await run.waitForExit(timeout: 15) == 0 else { return nil }
        return run.stdoutLines.first.flatMap { Int($0) }
    }

    /// Waits until the primary has a synchronous standby streaming (a commit waits for it) and
    /// Patroni has recorded it as such in etcd (until then it would not promote it: after the
    /// primary's PostgreSQL restarts in place, that takes a few seconds).
    public func waitForSynchronousStandby(timeout: Double = 60) async throws {
        try await waitUntil("a synchronous standby", timeout: timeout) {
            for (node, process) in nodes.withLock({ $0 }) where !process.isRunning {
                throw SetupError("Patroni of node \(node) exited: \(process.stderrLines.suffix(8))")
            }
            guard let primary = try await primary(), let standby = try await synchronousStandby(), standby != primary
            else { return false }
            let rows = try? await psql(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming'",
                node: primary)
            return rows == ["1"]
        }
    }

    /// The pid of `node`'s postmaster, from its postmaster.pid.
    public func postmaster(of node: Int) -> pid_t? {
        guard let text = try? String(contentsOfFile: folder.file("node\(node)/postmaster.pid"), encoding: .utf8),
            let first = text.split(separator: "\n").first
        else { return nil }
        return pid_t(first)
    }

    /// Loses `node`'s machine: its Patroni and all of its PostgreSQL frozen at once, then
    /// killed (`pg-ha.sh lose`). Returns an instant just after the freeze: nothing the node
    /// does can answer a request sent after it.
    @discardableResult
    public func killNode(_ node: Int) async throws -> ContinuousClock.Instant {
        guard let patroni = nodes.withLock({ $0[node] }) else { throw SetupError("node \(node) is not running") }
        let postmaster = postmaster(of: node)
        let lose = try ChildProcess(Self.script, ["lose", folder.path, String(node)])
        guard try await lose.waitForExit(timeout: 10) == 0 else {
            throw SetupError("pg-ha.sh lose: \(lose.stderrLines.suffix(5))")
        }
        let lost = ContinuousClock.now
        _ = try await patroni.waitForExit(timeout: 10)
        nodes.withLock { $0[node] = nil }
        if let postmaster {
            try await waitUntil("node \(node)'s PostgreSQL to exit", timeout: 10) { kill(postmaster, 0) != 0 }
        }
        return lost
    }

    /// SIGKILL to `node`'s PostgreSQL only (its Patroni starts it again).
    public func killPostgres(of node: Int) throws {
        guard let postmaster = postmaster(of: node) else { throw SetupError("node \(node) has no postmaster.pid") }
        kill(postmaster, SIGKILL)
    }

    /// Runs `sql` with psql, on `node` directly or (nil) through HAProxy; returns its rows.
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres", node: Int? = nil) async throws -> [String] {
        try await runPSQL(sql, port: node.map { nodePorts[$0 - 1] } ?? port, database: database)
    }

    /// Creates an empty database (on the primary) and returns its URL through HAProxy.
    public func newDatabase() async throws -> PostgresStoreURL {
        let number = databases.withLock { count in
            count += 1
            return count
        }
        let name = "directory_\(number)"
        try await psql("CREATE DATABASE \(name)")
        return PostgresStoreURL(host: "127.0.0.1", port: port, user: "p2p", database: name, tlsMode: .disable)
    }

    /// The last lines of each node's Patroni and PostgreSQL (for a failing test's message).
    public func recentLogs(lines: Int = 60) -> String {
        nodes.withLock { $0 }.sorted(by: { $0.key < $1.key }).map { node, process in
            let output = (process.stderrLines + process.stdoutLines).filter {
                !$0.contains("no action.") && !$0.hasSuffix("- no response")
            }
            return "node \(node):\n" + output.suffix(lines).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// Stops everything in order (HAProxy, the nodes, etcd) and removes the folder.
    public func stop() async {
        await proxy.stop()
        let running = nodes.withLock { $0 }
        // Patroni stops its PostgreSQL on SIGTERM; the replica first, then the primary.
        for (node, patroni) in running.sorted(by: { $0.key > $1.key }) where patroni.isRunning {
            // Read while it runs: a stale postmaster.pid could name some other process later.
            let postmaster = postmaster(of: node)
            await patroni.stop(grace: 30)
            if let postmaster, kill(postmaster, 0) == 0 { kill(postmaster, SIGKILL) }
        }
        await etcd.stop()
        folder.remove()
    }
}
