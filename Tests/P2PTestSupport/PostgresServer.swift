import Foundation
import P2PDirectory
import P2PDirectoryPostgres

/// A private PostgreSQL server (Debian's, installed by setup.sh) for the tests: its own data
/// folder under the temporary directory, its own port on 127.0.0.1, trust authentication for
/// the user `p2p`. PostgreSQL refuses to run as root, so as root it runs as the `postgres`
/// system user (setpriv, which execs: the child process is the postmaster itself).
///
/// ``shared()`` is one server for the whole test process, each test taking a fresh database
/// from it (``newDatabase()``), stopped when the process exits; a test that stops and starts
/// PostgreSQL makes its own with ``start()``.
public final class PostgresServer: Sendable {
    public let port: Int
    public let folder: TemporaryDirectory
    private let binaries: String
    /// The simulated host it runs on (its programs run in that namespace), nil for this machine.
    private let host: SimulatedInternet.Host?
    private let process = Locked<ChildProcess?>(nil)
    private let databases = Locked(0)

    private var dataDirectory: String { folder.file("data") }

    private init(port: Int, folder: TemporaryDirectory, binaries: String, host: SimulatedInternet.Host?) {
        self.host = host
        self.port = port
        self.folder = folder
        self.binaries = binaries
    }

    /// Creates a cluster in a new temporary folder and starts it, on 127.0.0.1 of `host` (a
    /// simulated host's namespace; this machine's when nil).
    public static func start(inside host: SimulatedInternet.Host? = nil) async throws -> PostgresServer {
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        guard let version = versions.compactMap(Int.init).max() else {
            throw SetupError("PostgreSQL is not installed (/usr/lib/postgresql): run ./setup.sh (make test does)")
        }
        let folder = try TemporaryDirectory("p2p-postgres")
        let server = PostgresServer(
            port: try unusedPort(), folder: folder, binaries: "/usr/lib/postgresql/\(version)/bin", host: host)
        if getuid() == 0 {
            guard let account = getpwnam("postgres") else { throw SetupError("no postgres system user") }
            guard chown(folder.path, account.pointee.pw_uid, account.pointee.pw_gid) == 0 else {
                throw SetupError("chown \(folder.path): \(String(cString: strerror(errno)))")
            }
        }
        let initdb = try server.command(
            "initdb",
            ["-D", server.dataDirectory, "-U", "p2p", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        guard try await initdb.waitForExit(timeout: 120) == 0 else {
            throw SetupError("initdb failed: \(initdb.stderrLines.suffix(5)) \(initdb.stdoutLines.suffix(5))")
        }
        try await server.startPostmaster()
        return server
    }

    /// Runs one of PostgreSQL's programs, as the `postgres` user when we are root.
    private func command(_ program: String, _ arguments: [String]) throws -> ChildProcess {
        let path = "\(binaries)/\(program)"
        let (executable, all) =
            getuid() == 0
            ? SimulatedInternet.command(
                in: host, "/usr/bin/setpriv",
                ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", path] + arguments)
            : SimulatedInternet.command(in: host, path, arguments)
        return try ChildProcess(executable, all, directory: folder.path)
    }

    private func startPostmaster() async throws {
        let postmaster = try command(
            "postgres",
            [
                "-D", dataDirectory, "-p", String(port), "-c", "listen_addresses=127.0.0.1",
                "-c", "unix_socket_directories=\(folder.path)", "-c", "max_connections=300",
                "-c", "shared_buffers=64MB",
            ])
        process.withLock { $0 = postmaster }
        try await waitUntil("PostgreSQL on port \(port)", timeout: 60) {
            guard postmaster.isRunning else {
                throw SetupError("postgres exited: \(postmaster.stderrLines.suffix(8))")
            }
            return try await isReady()
        }
    }

    private func isReady() async throws -> Bool {
        let (executable, arguments) = SimulatedInternet.command(
            in: host, "\(binaries)/pg_isready",
            ["-q", "-h", "127.0.0.1", "-p", String(port), "-U", "p2p", "-d", "postgres"])
        let probe = try ChildProcess(executable, arguments)
        return try await probe.waitForExit(timeout: 10) == 0
    }

    /// Stops the postmaster (fast shutdown: open sessions are ended) and waits for it to exit.
    public func stop() async {
        guard let postmaster = process.withLock({ $0 }) else { return }
        postmaster.signal(SIGINT)
        if (try? await postmaster.waitForExit(timeout: 30)) == nil {
            postmaster.signal(SIGKILL)
            _ = try? await postmaster.waitForExit(timeout: 5)
        }
    }

    /// Starts the postmaster again on the same port and data.
    public func restart() async throws {
        try await startPostmaster()
    }

    /// Stops the server and removes its folder.
    public func remove() async {
        await stop()
        folder.remove()
    }

    /// A URL for `database` on this server.
    public func url(database: String = "postgres") -> PostgresStoreURL {
        PostgresStoreURL(host: "127.0.0.1", port: port, user: "p2p", database: database, tlsMode: .disable)
    }

    /// Creates an empty database and returns its URL.
    public func newDatabase() async throws -> PostgresStoreURL {
        let name = "directory_\(getpid())_\(databases.withLock { $0 += 1; return $0 })"
        try await psql("CREATE DATABASE \(name)")
        return url(database: name)
    }

    /// Runs `sql` with psql on `database`; returns its output lines (unaligned, tuples only).
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres") async throws -> [String] {
        try await runPSQL(sql, port: port, database: database, inside: host)
    }

    /// One server for the whole test process, started by the first test that needs it and
    /// stopped (its folder removed) when the process exits.
    public static func shared() async throws -> PostgresServer {
        let task = sharedServer.withLock { task in
            if let task { return task }
            let started = Task { try await PostgresServer.start() }
            task = started
            return started
        }
        let server = try await task.value
        sharedStop.withLock { stop in
            guard stop == nil else { return }
            stop = { [server] in server.stopAtExit() }
            atexit { sharedStop.withLock { $0 }?() }
        }
        return server
    }

    /// At exit there is no event loop to await on: signal and wait by polling.
    private func stopAtExit() {
        guard let postmaster = process.withLock({ $0 }), postmaster.isRunning else {
            folder.remove()
            return
        }
        postmaster.signal(SIGINT)
        for _ in 0..<300 where postmaster.isRunning { usleep(50_000) }
        if postmaster.isRunning { postmaster.signal(SIGKILL) }
        folder.remove()
    }
}

/// Runs `sql` with psql as `p2p` on 127.0.0.1:`port`; returns its output lines (unaligned,
/// tuples only), or throws with psql's last error lines.
func runPSQL(
    _ sql: String, port: Int, database: String, inside host: SimulatedInternet.Host? = nil
) async throws -> [String] {
    let (executable, arguments) = SimulatedInternet.command(
        in: host, "/usr/bin/psql",
        [
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", String(port), "-U", "p2p",
            "-d", database, "-c", sql,
        ])
    let run = try ChildProcess(executable, arguments)
    guard try await run.waitForExit(timeout: 60) == 0 else {
        throw SetupError("psql \(sql): \(run.stderrLines.suffix(5))")
    }
    return run.stdoutLines
}

private let sharedServer = Locked<Task<PostgresServer, any Error>?>(nil)
private let sharedStop = Locked<(@Sendable () -> Void)?>(nil)
