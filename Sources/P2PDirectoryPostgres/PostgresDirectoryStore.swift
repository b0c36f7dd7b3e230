import Foundation
import Logging
import P2PDirectory
import P2PProtocol
import PostgresNIO
import Synchronization

/// The shared directory store: PostgreSQL through postgres-nio, for several directory servers
/// on one database (`p2p-server --store postgres://...`).
///
/// Nothing is cached: every request reads or changes the database, so a change one server
/// answered 0 is seen by the next request to any server. Each batch of changes is one
/// transaction (READ COMMITTED) and is answered only after COMMIT returned, with
/// `synchronous_commit = on` (set when connecting). A change is decided from its user's row,
/// locked (`SELECT ... FOR UPDATE`) for the rest of the transaction, so changes of one user
/// sent to different servers at the same moment are decided one after the other exactly as on
/// one server; REGISTER of one name is decided by the primary key (`ON CONFLICT DO NOTHING`).
/// A batch about several users locks their rows in name order first, so that two batches do
/// not deadlock on existing users' rows (two batches registering the same new names in
/// opposite orders still can: PostgreSQL detects it and the transaction is run again). A run
/// of REGISTERs is one multi-row INSERT.
///
/// Only SQL that the PostgreSQL-compatible distributed databases also accept: no
/// LISTEN/NOTIFY, no advisory locks, no functions of our own. A transaction that fails with a
/// serialization failure (40001, what they report under contention) or a deadlock (40P01) is
/// run again, a few times.
///
/// When the database does not answer (stopped, unreachable), each request gets its
/// operation's "other" code after at most ``Settings/timeout``; the store logs the outage once
/// and its return once, and serves again as soon as a connection can be made.
public final class PostgresDirectoryStore: DirectoryStore {
    public struct Settings: Sendable {
        /// The longest a request waits for the database before it gets its error code (below
        /// the server's idle timeout, so a client always hears back).
        public var timeout: Duration = .seconds(2)
        /// The longest connecting at open may take, up to the first statement answered. (Not
        /// the migrations: rewriting a large directory's tables takes minutes, and a server
        /// starting meanwhile waits for them.)
        public var openTimeout: Duration = .seconds(15)
        /// Connections to PostgreSQL this server keeps at most.
        public var maximumConnections = 20
        /// How long SEARCH uses a planner's estimate before asking for it again (in the
        /// background; see `remembered(_:on:ask:)`).
        public var estimateLifetime: Duration = .seconds(60)

        public init() {}
    }

    /// The most times a transaction is tried when it fails with 40001 or 40P01.
    static let maxAttempts = 8

    public let url: PostgresStoreURL
    let client: PostgresClient
    /// Runs the client's connection pool for the store's lifetime; cancelled by ``close()``.
    let runner: Task<Void, Never>
    let settings: Settings
    let logger: Logger
    /// The planner's estimates SEARCH asked for and when (see `remembered(_:on:ask:)`).
    let estimates = Mutex<[Estimate: (value: Double, at: ContinuousClock.Instant)]>([:])
    let metrics: DirectoryMetrics
    let state = Mutex(State())

    struct State {
        var closed = false
        /// Whether the last operation failed (the outage has been logged).
        var failing = false
    }

    init(url: PostgresStoreURL, settings: Settings, logger: Logger, metrics: DirectoryMetrics) {
        self.url = url
        self.settings = settings
        self.logger = logger
        self.metrics = metrics
        var configuration = PostgresClient.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database,
            tls: {
                switch url.tlsMode {
                case .disable: return .disable
                case .prefer: return .prefer(.makeClientConfiguration())
                case .require: return .require(.makeClientConfiguration())
                }
            }())
        configuration.options.additionalStartupParameters = [
            // Whatever the database's default: a change is answered only once it is durable.
            ("synchronous_commit", "on"),
            ("application_name", "p2p-server"),
        ]
        configuration.options.connectTimeout = settings.timeout
        configuration.options.maximumConnections = settings.maximumConnections
        let client = PostgresClient(configuration: configuration)
        self.client = client
        runner = Task { await client.run() }
    }

    /// Connects to the database at `url` and creates or migrates the directory's tables.
    public static func open(
        _ url: PostgresStoreURL, settings: Settings = Settings(), logger: Logger, metrics: DirectoryMetrics = .none
    ) async throws(PostgresStoreError) -> PostgresDirectoryStore {
        let store = PostgresDirectoryStore(url: url, settings: settings, logger: logger, metrics: metrics)
        do {
            try await withDeadline(settings.openTimeout) {
                try await probe(url, settings: settings, logger: logger)
                try await store.createSchemaTable()
            }
            try await store.migrate()
        } catch {
            try? await store.close()
            throw .cannotOpen(url, Self.describe(error))
        }
        return store
    }

    /// One connection made directly, before anything goes through the pool: a database that
    /// cannot be reached or refuses us is reported at once, with PostgreSQL's reason (connection
    /// refused, no such database, authentication failed), where the pool would keep retrying
    /// until the open timeout and say only that it timed out.
    static func probe(_ url: PostgresStoreURL, settings: Settings, logger: Logger) async throws {
        let tls: PostgresConnection.Configuration.TLS
        switch url.tlsMode {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
        case .require: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        }
        var configuration = PostgresConnection.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: tls
        )
        configuration.options.connectTimeout = .milliseconds(Int64(settings.timeout / .milliseconds(1)))
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
        try await connection.close()
    }

    public func close() async throws {
        let wasOpen = state.withLock { state in
            defer { state.closed = true }
            return !state.closed
        }
        guard wasOpen else { return }
        runner.cancel()
        await runner.value
    }

    var isClosed: Bool { state.withLock { $0.closed } }
}

/// Why the PostgreSQL store could not do something.
public enum PostgresStoreError: Error, CustomStringConvertible {
    case cannotOpen(PostgresStoreURL, String)
    case newerSchema(Int, known: Int)
    case notEmpty(users: Int)
    case unavailable(String)
    case timedOut
    case closed

    public var description: String {
        switch self {
        case .cannotOpen(_, let reason):
            // The URL is said by whoever reports this (it names the store already).
            return "PostgreSQL: \(reason)"
        case .newerSchema(let version, let known):
            return "the database's directory schema is version \(version), newer than this server's \(known): "
                + "upgrade the server"
        case .notEmpty(let users):
            return "the target directory is not empty (\(users) users); add --replace to overwrite it"
        case .unavailable(let reason):
            return "PostgreSQL does not answer: \(reason)"
        case .timedOut:
            return "PostgreSQL did not answer in time"
        case .closed:
            return "the store is closed"
        }
    }
}
