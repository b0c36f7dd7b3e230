import P2PDirectory
import Foundation
import Logging
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
    private let client: PostgresClient
    /// Runs the client's connection pool for the store's lifetime; cancelled by ``close()``.
    private let runner: Task<Void, Never>
    private let settings: Settings
    private let logger: Logger
    /// The planner's estimates SEARCH asked for and when (see `remembered(_:on:ask:)`).
    private let estimates = Mutex<[Estimate: (value: Double, at: ContinuousClock.Instant)]>([:])
    private let metrics: DirectoryMetrics
    private let state = Mutex(State())

    private struct State {
        var closed = false
        /// Whether the last operation failed (the outage has been logged).
        var failing = false
    }

    private init(url: PostgresStoreURL, settings: Settings, logger: Logger, metrics: DirectoryMetrics) {
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
    private static func probe(_ url: PostgresStoreURL, settings: Settings, logger: Logger) async throws {
        let tls: PostgresConnection.Configuration.TLS
        switch url.tlsMode {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
        case .require: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        }
        var configuration = PostgresConnection.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: tls)
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

    private var isClosed: Bool { state.withLock { $0.closed } }

    // MARK: Schema

    /// The schema, one step per version, applied in order and recorded in
    /// `directory_schema`. A step is never changed once released: a new version is added.
    static let migrations: [(version: Int, name: String, statements: [String])] = [
        (
            1, "directory tables",
            [
                // COLLATE "C": names compare and sort by their bytes, as in SQLite, whatever
                // the database's locale. ip and port are NULL while the user is not connected.
                """
                CREATE TABLE directory_user (
                    name TEXT COLLATE "C" PRIMARY KEY,
                    ip TEXT,
                    port TEXT
                )
                """,
                // LIST_USERS reads the connected users from this index without visiting the others.
                "CREATE INDEX directory_user_connected ON directory_user (name) WHERE ip IS NOT NULL",
                // id orders a user's files by publishing.
                """
                CREATE TABLE directory_file (
                    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    owner TEXT COLLATE "C" NOT NULL REFERENCES directory_user (name) ON DELETE CASCADE,
                    name TEXT COLLATE "C" NOT NULL,
                    description TEXT NOT NULL,
                    UNIQUE (owner, name)
                )
                """,
                // SEARCH: every word of a file's name and description (DirectoryRules.searchWords,
                // folded as the query's words are), so that a prefix is a range of this index.
                // Plain tables and a B-tree, which every PostgreSQL-compatible database has.
                """
                CREATE TABLE directory_file_word (
                    word TEXT COLLATE "C" NOT NULL,
                    file_id BIGINT NOT NULL REFERENCES directory_file (id) ON DELETE CASCADE,
                    PRIMARY KEY (word, file_id)
                )
                """,
                "CREATE INDEX directory_file_word_file ON directory_file_word (file_id)",
            ]
        ),
        (
            2, "control connection leases",
            [
                // Until when a server holds the user's control connection: the peer checks of
                // every server leave the user alone until then (NULL: nobody holds it).
                "ALTER TABLE directory_user ADD COLUMN control_until TIMESTAMPTZ"
            ]
        ),
        (
            3, "peer check claims",
            [
                // Which server checks the user's peer, until when: each connected user is
                // checked by one of the servers sharing the directory.
                "ALTER TABLE directory_user ADD COLUMN check_by TEXT, ADD COLUMN check_until TIMESTAMPTZ"
            ]
        ),
        (
            4, "search order in the word index",
            [
                // SEARCH answers online owners' files first, then in publishing order: with that
                // order in the index, a word's first hits are read without visiting every match
                // (and its owner). Kept equal to the owner's `ip IS NULL` by CONNECT,
                // DISCONNECT and expiry, which update the user's files' words.
                "ALTER TABLE directory_file_word ADD COLUMN offline BOOLEAN NOT NULL DEFAULT true",
                """
                UPDATE directory_file_word w SET offline = false
                FROM directory_file f JOIN directory_user u ON u.name = f.owner
                WHERE f.id = w.file_id AND u.ip IS NOT NULL
                """,
                "CREATE INDEX directory_file_word_order ON directory_file_word (word, offline, file_id)",
                // Whether a file has a word with a given prefix, in one index descent (with the
                // file id alone PostgreSQL preferred to scan the prefix's whole range instead).
                "CREATE INDEX directory_file_word_file_word ON directory_file_word (file_id, word)",
                "DROP INDEX directory_file_word_file",
            ]
        ),
        (
            5, "peer checkers",
            [
                // The servers checking peers, each until when it is alive (renewed every round):
                // a server takes its share of the connected users, the count over the live ones.
                """
                CREATE TABLE directory_checker (
                    id TEXT COLLATE "C" PRIMARY KEY,
                    alive_until TIMESTAMPTZ NOT NULL
                )
                """
            ]
        ),
        (
            6, "each word row carries its file's words",
            [
                // Every row of a file carries all the file's words (``wordsColumn(_:)``), and the
                // search index includes them: a candidate read for one prefix is tested for the
                // others in the row it came in (a string search), instead of a probe of the
                // (file_id, word) index per candidate or a hash of every file of the other
                // prefix. `w123 w456` at 10 million files (16,500 and 166,000 files, none in
                // common) went from about 100 ms to about 25 ms alone.
                // The table is built again rather than updated in place: an UPDATE of every row
                // writes each twice and every index entry again (at 10 million files it had run
                // 15 minutes when it was stopped; this took 10). Locked first: a server of the
                // previous version writing meanwhile waits, then fails (answers an error), and
                // nothing it was answered 0 for is left behind in the old table.
                "LOCK TABLE directory_file_word IN SHARE MODE",
                // Memory for this transaction's join and index builds (the defaults spill to disk).
                "SET LOCAL work_mem = '256MB'",
                "SET LOCAL maintenance_work_mem = '256MB'",
                """
                CREATE TABLE directory_file_word_6 (
                    word TEXT COLLATE "C" NOT NULL,
                    file_id BIGINT NOT NULL,
                    offline BOOLEAN NOT NULL,
                    words TEXT NOT NULL
                )
                """,
                """
                INSERT INTO directory_file_word_6 (word, file_id, offline, words)
                SELECT w.word, w.file_id, w.offline, f.words FROM directory_file_word w
                JOIN (SELECT file_id, string_agg(' ' || word, '' ORDER BY word) AS words
                      FROM directory_file_word GROUP BY file_id) AS f USING (file_id)
                """,
                "DROP TABLE directory_file_word",
                "ALTER TABLE directory_file_word_6 RENAME TO directory_file_word",
                "ALTER TABLE directory_file_word ADD CONSTRAINT directory_file_word_pkey PRIMARY KEY (word, file_id)",
                """
                ALTER TABLE directory_file_word ADD CONSTRAINT directory_file_word_file_id_fkey
                FOREIGN KEY (file_id) REFERENCES directory_file (id) ON DELETE CASCADE
                """,
                "CREATE INDEX directory_file_word_file_word ON directory_file_word (file_id, word)",
                "CREATE INDEX directory_file_word_search ON directory_file_word (word, offline, file_id) INCLUDE (words)",
                // SEARCH's choice of prefix reads the planner's statistics: there at once.
                "ANALYZE directory_file_word",
            ]
        ),
        (
            7, "keys",
            // The key a user is bound to (docs/PROTOCOL.md, "Keys"), NULL while unbound.
            [
                "ALTER TABLE directory_user ADD COLUMN key TEXT",
                // What the keyed sessions are sealed with (``DirectoryStore/sessionSecret()``).
                "CREATE TABLE directory_secret (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            ]
        ),
    ]

    /// A file's words as the word table's `words` column keeps them: each word (folded, as
    /// ``DirectoryRules/searchWords(_:)`` makes them: letters and digits only) after a space,
    /// so that "a word of the file starts with P" is "the column contains space + P".
    static func wordsColumn(_ words: some Sequence<String>) -> String {
        words.sorted().map { " " + $0 }.joined()
    }

    /// The words of a file named `name` with `description`, each once.
    static func searchWords(name: String, description: String) -> [String] {
        Array(Set(DirectoryRules.searchWords(name) + DirectoryRules.searchWords(description)))
    }

    /// The table of the versions applied, if there is none yet.
    private func createSchemaTable() async throws {
        for attempt in 1...Self.maxAttempts {
            do {
                try await client.query(
                    """
                    CREATE TABLE IF NOT EXISTS directory_schema (
                        version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())
                    """, logger: logger)
                break
            } catch where attempt < Self.maxAttempts && Self.isConcurrentCreation(error) {
                // Another server created it at the same moment.
                try await Task.sleep(for: .milliseconds(20 * attempt))
            }
        }
    }

    /// Applies the migrations this database has not had. Several servers starting at once
    /// each claim a version by inserting its row first: the others wait for that transaction
    /// and find the version applied.
    private func migrate() async throws {
        for migration in Self.migrations {
            try await transaction { connection in
                let claimed = try await Self.count(
                    connection,
                    """
                    INSERT INTO directory_schema (version, name) VALUES (\(migration.version), \(migration.name))
                    ON CONFLICT (version) DO NOTHING RETURNING 1
                    """, logger: self.logger)
                guard claimed == 1 else { return }
                self.logger.info("directory schema: applying version \(migration.version) (\(migration.name))")
                for statement in migration.statements {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: self.logger)
                }
                self.logger.info("directory schema: applied version \(migration.version) (\(migration.name))")
            }
        }
        let newest = try await client.query("SELECT max(version) FROM directory_schema", logger: logger)
            .decode(Int?.self).first(where: { _ in true }) ?? nil
        if let newest, newest > Self.migrations.last!.version {
            throw PostgresStoreError.newerSchema(newest, known: Self.migrations.last!.version)
        }
    }

    // MARK: Changes

    public func apply(_ changes: [DirectoryChange]) async -> [P2PProtocol.ResultCode] {
        guard !changes.isEmpty else { return [] }
        guard !isClosed else { return changes.map(\.operation.otherErrorCode) }
        do {
            let (codes, refusals) = try await Self.withDeadline(settings.timeout) {
                try await self.transaction { connection in
                    try await self.decide(changes, on: connection)
                }
            }
            succeeded()
            if codes.contains(.ok) {
                metrics.commits.increment()
                metrics.changesPerCommit.record(changes.count)
            }
            for refusal in refusals { logger.warning("\(refusal)") }
            return codes
        } catch {
            failed(error, doing: "\(changes.count) changes refused")
            return changes.map(\.operation.otherErrorCode)
        }
    }

    /// Decides `changes` in order inside the open transaction on `connection`.
    private func decide(
        _ changes: [DirectoryChange], on connection: PostgresConnection
    ) async throws -> (codes: [ResultCode], refusals: [String]) {
        // REGISTER locks nothing (the primary key decides it); the others lock their user's row.
        let users = Set(changes.filter { !$0.isRegister }.map(\.user))
        if users.count > 1 {
            // Lock order: by name, in every transaction.
            try await connection.query(
                "SELECT name FROM directory_user WHERE name = ANY(\(users.sorted())) ORDER BY name FOR UPDATE",
                logger: logger)
        }
        var codes: [ResultCode] = []
        var refusals: [String] = []
        var index = changes.startIndex
        while index < changes.endIndex {
            // A run of REGISTERs is one statement.
            let run = changes[index...].prefix(while: \.isRegister)
            if run.count > 1 {
                codes += try await register(run.map(\.user), on: connection)
                index += run.count
                continue
            }
            let change = changes[index]
            codes.append(
                try await decide(change, on: connection, keyRefused: { refusals.append(change.keyRefusal) }) {
                    connectedFrom in
                    refusals.append(change.ownerCheckRefusal(connectedFrom: connectedFrom))
                })
            index += 1
        }
        return (codes, refusals)
    }

    /// REGISTERs in a row, in one INSERT: each name inserted by it gets 0 at its first
    /// occurrence; a name already there, or a repeat, 1; an invalid one 2. The same codes as
    /// one INSERT per name in order.
    private func register(_ names: [String], on connection: PostgresConnection) async throws -> [ResultCode] {
        var distinct: [String] = []
        var seen = Set<String>()
        for name in names where DirectoryRules.isValidUserName(name) && seen.insert(name).inserted {
            distinct.append(name)
        }
        // Inserted in one order whatever the order of the requests (bytes, as the "C" index):
        // two servers inserting the same new names wait for each other in that order, never in
        // a cycle (which PostgreSQL would break only after its deadlock timeout, 1 s).
        distinct.sort { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        var inserted = Set<String>()
        for try await name in try await connection.query(
            """
            INSERT INTO directory_user (name) SELECT * FROM unnest(\(distinct)::text[])
            ON CONFLICT (name) DO NOTHING RETURNING name
            """, logger: logger
        ).decode(String.self) {
            inserted.insert(name)
        }
        return names.map { name in
            guard DirectoryRules.isValidUserName(name) else { return 2 }
            return inserted.remove(name) != nil ? .ok : 1
        }
    }

    /// Decides one change by PROTOCOL.md section 2 from its user's row, locked until the
    /// transaction ends (the codes that depend on it are ``DirectoryRules/gate(_:_:)``'s, as in
    /// every store), and makes it.
    private func decide(
        _ original: DirectoryChange, on connection: PostgresConnection, keyRefused: () -> Void = {},
        refused: (_ connectedFrom: String) -> Void
    ) async throws -> ResultCode {
        if case .register(let user) = original.unkeyed.change {
            if let code = DirectoryRules.gate(original, .unknown).code { return code }
            // A keyed REGISTER binds the name it creates (``DirectoryRules/keyGate(_:boundKey:)``).
            let key = original.unkeyed.key
            let inserted = try await Self.count(
                connection,
                "INSERT INTO directory_user (name, key) VALUES (\(user), \(key)) ON CONFLICT (name) DO NOTHING RETURNING 1",
                logger: logger)
            return inserted == 1 ? .ok : 1
        }
        let presence: Presence
        let row = try await lockedRow(of: original.user, connection)
        if let row {
            presence = row.ip.map { .online(ip: $0, port: row.port ?? "") } ?? .offline
        } else {
            presence = .unknown
        }
        let bind: String?
        let change: DirectoryChange
        switch DirectoryRules.keyGate(original, boundKey: row?.key) {
        case .refuse(let code):
            keyRefused()
            return code
        case .proceed(let unkeyed, let key):
            change = unkeyed
            bind = key
        }
        switch DirectoryRules.gate(change, presence) {
        case .proceed: break
        case .refuse(let code): return code
        case .refuseByOwnerCheck(let code, let ip):
            refused(ip)
            return code
        }
        if let bind {
            // Only a CONNECT binds here, and past the gate it is made: bound with it, on the row
            // locked above.
            try await connection.query(
                "UPDATE directory_user SET key = \(bind) WHERE name = \(change.user) AND key IS NULL", logger: logger)
        }
        switch change {
        case .register, .keyed:
            preconditionFailure("decided above")

        case .unregister(let user, _):
            // Its files and their words go with it (ON DELETE CASCADE).
            try await connection.query("DELETE FROM directory_user WHERE name = \(user)", logger: logger)
            return .ok

        case .connect(let user, let ip, let port):
            try await connection.query(
                "UPDATE directory_user SET ip = \(ip), port = \(port) WHERE name = \(user)", logger: logger)
            try await setSearchOrder(of: user, offline: false, connection)
            return .ok

        case .disconnect(let user, _), .expire(let user, _, _):
            try await connection.query(
                "UPDATE directory_user SET ip = NULL, port = NULL WHERE name = \(user)", logger: logger)
            try await setSearchOrder(of: user, offline: true, connection)
            return .ok

        case .publish(let user, let fileName, let description, _):
            let words = Self.searchWords(name: fileName, description: description)
            let offline: Bool
            if case .online = presence { offline = false } else { offline = true }
            let inserted = try await Self.count(
                connection,
                """
                WITH f AS (
                    INSERT INTO directory_file (owner, name, description) VALUES (\(user), \(fileName), \(description))
                    ON CONFLICT (owner, name) DO NOTHING RETURNING id),
                w AS (
                    INSERT INTO directory_file_word (word, file_id, offline, words)
                    SELECT words.word, f.id, \(offline), \(Self.wordsColumn(words))
                    FROM f CROSS JOIN unnest(\(words)::text[]) AS words (word))
                SELECT 1 FROM f
                """, logger: logger)
            return inserted == 1 ? .ok : 3

        case .delete(let user, let fileName, _):
            let deleted = try await Self.count(
                connection, "DELETE FROM directory_file WHERE owner = \(user) AND name = \(fileName) RETURNING 1",
                logger: logger)
            return deleted == 1 ? .ok : 3
        }
    }

    /// Marks the search words of `user`'s files as an online or offline owner's (the order
    /// SEARCH answers in). Only rows that change are written.
    private func setSearchOrder(of user: String, offline: Bool, _ connection: PostgresConnection) async throws {
        try await connection.query(
            """
            UPDATE directory_file_word w SET offline = \(offline) FROM directory_file f
            WHERE f.owner = \(user) AND w.file_id = f.id AND w.offline <> \(offline)
            """, logger: logger)
    }

    /// `user`'s address, locked until the transaction ends; nil when there is no such user.
    private func lockedRow(
        of user: String, _ connection: PostgresConnection
    ) async throws -> (ip: String?, port: String?, key: String?)? {
        let rows = try await connection.query(
            "SELECT ip, port, key FROM directory_user WHERE name = \(user) FOR UPDATE", logger: logger)
        for try await (ip, port, key) in rows.decode((String?, String?, String?).self) { return (ip, port, key) }
        return nil
    }

    // MARK: Reads

    /// A batch's LIST_CONTENTs as one statement (``listContents(_:on:)``), every other query on
    /// a connection of its own, all at once (up to the pool's size): reads need no transaction.
    /// In `make bench`, LIST_CONTENT at 64 clients went from 0.55 of pgbench's rate on the same
    /// SQL (the batch's queries one after another on one connection, three statements each)
    /// to 0.86.
    public func read(_ queries: [DirectoryQuery]) async -> [Reply] {
        guard !queries.isEmpty else { return [] }
        guard !isClosed else { return queries.map { .status($0.operation.otherErrorCode) } }
        // One deadline for the batch: past it, every query still unanswered gets its code.
        let answers: [Result<Reply, any Error>?]
        do {
            answers = try await Self.withDeadline(settings.timeout) {
                await withTaskGroup(of: [(Int, Result<Reply, any Error>)].self) { group in
                    // The LIST_CONTENTs together, as one statement; each other query alone.
                    let contents = queries.indices.filter { if case .listContent = queries[$0] { true } else { false } }
                    var parts = queries.indices.filter { !contents.contains($0) }.map { [$0] }
                    if !contents.isEmpty { parts.append(contents) }
                    for part in parts {
                        group.addTask {
                            do {
                                let replies = try await self.client.withConnection { connection in
                                    part.count == 1
                                        ? [try await self.answer(queries[part[0]], on: connection)]
                                        : try await self.listContents(part.map { queries[$0] }, on: connection)
                                }
                                return zip(part, replies).map { ($0, .success($1)) }
                            } catch {
                                return part.map { ($0, .failure(error)) }
                            }
                        }
                    }
                    var answers = [Result<Reply, any Error>?](repeating: nil, count: queries.count)
                    for await part in group {
                        for (index, answer) in part { answers[index] = answer }
                    }
                    return answers
                }
            }
        } catch {
            answers = queries.map { _ in .failure(error) }
        }
        var replies: [Reply] = []
        for (query, answer) in zip(queries, answers) {
            switch answer {
            case .success(let reply)?:
                replies.append(reply)
            case .failure(let error)?:
                failed(error, doing: "\(query.operation.rawValue) refused")
                replies.append(.status(query.operation.otherErrorCode))
            case nil:
                replies.append(.status(query.operation.otherErrorCode))
            }
        }
        if answers.contains(where: { if case .success? = $0 { true } else { false } }) { succeeded() }
        return replies
    }

    /// LIST_USERS and LIST_CONTENT are one statement each (the requester's row joined with
    /// what it asks for): one round trip rather than three (pgbench ran LIST_CONTENT's one
    /// statement about 5,600 times a second here, its three 3,500 to 4,400 times).
    private func answer(_ query: DirectoryQuery, on connection: PostgresConnection) async throws -> Reply {
        switch query {
        case .listUsers(let requester):
            let rows = try await connection.query(
                """
                SELECT r.name IS NOT NULL, r.ip IS NOT NULL, u.name, u.ip, u.port
                FROM (VALUES (1)) AS one (x)
                LEFT JOIN directory_user r ON r.name = \(requester)
                LEFT JOIN directory_user u ON u.ip IS NOT NULL AND r.ip IS NOT NULL
                ORDER BY u.name
                """, logger: logger)
            var users: [ConnectedUser] = []
            for try await (exists, connected, name, ip, port) in rows.decode((Bool, Bool, String?, String?, String?).self) {
                if let code = DirectoryRules.requesterCode(registered: exists, connected: connected) {
                    return .status(code)
                }
                if let name, let ip, let port { users.append(ConnectedUser(name: name, ip: ip, port: port)) }
            }
            return .users(users)

        case .listContent(let requester, let owner):
            let rows = try await connection.query(
                """
                SELECT r.name IS NOT NULL, r.ip IS NOT NULL, o.name IS NOT NULL, f.name, f.description
                FROM (VALUES (1)) AS one (x)
                LEFT JOIN directory_user r ON r.name = \(requester)
                LEFT JOIN directory_user o ON o.name = \(owner)
                LEFT JOIN directory_file f ON f.owner = o.name AND r.ip IS NOT NULL
                ORDER BY f.id
                """, logger: logger)
            var files: [PublishedFile] = []
            for try await (exists, connected, ownerExists, name, description) in rows.decode(
                (Bool, Bool, Bool, String?, String?).self)
            {
                if let code = DirectoryRules.requesterCode(registered: exists, connected: connected) {
                    return .status(code)
                }
                guard ownerExists else { return .status(3) }
                if let name, let description { files.append(PublishedFile(name: name, description: description)) }
            }
            return .content(files)

        case .search(let requester, let text):
            guard !DirectoryRules.searchWords(text).isEmpty else {
                let connected = try await presence(of: requester, connection)
                return .status(
                    DirectoryRules.requesterCode(registered: connected != nil, connected: connected == true) ?? 3)
            }
            switch try await search(text, requester: requester, connection) {
            case .refused(let code): return .status(code)
            case .hits(let hits): return .hits(hits)
            }
        }
    }

    /// Several LIST_CONTENTs in one statement (the single one's, for a list of requester and
    /// owner pairs): one round trip for a batch.
    private func listContents(_ queries: [DirectoryQuery], on connection: PostgresConnection) async throws -> [Reply] {
        var requesters: [String] = []
        var owners: [String] = []
        for case .listContent(let requester, let owner) in queries {
            requesters.append(requester)
            owners.append(owner)
        }
        let rows = try await connection.query(
            """
            SELECT q.i, r.name IS NOT NULL, r.ip IS NOT NULL, o.name IS NOT NULL, f.name, f.description
            FROM unnest(\(requesters)::text[], \(owners)::text[]) WITH ORDINALITY AS q (requester, owner, i)
            LEFT JOIN directory_user r ON r.name = q.requester
            LEFT JOIN directory_user o ON o.name = q.owner
            LEFT JOIN directory_file f ON f.owner = o.name AND r.ip IS NOT NULL
            ORDER BY q.i, f.id
            """, logger: logger)
        var codes = [ResultCode](repeating: .ok, count: requesters.count)
        var files = [[PublishedFile]](repeating: [], count: requesters.count)
        for try await (position, exists, connected, ownerExists, name, description) in rows.decode(
            (Int, Bool, Bool, Bool, String?, String?).self)
        {
            let index = position - 1
            codes[index] = DirectoryRules.requesterCode(registered: exists, connected: connected) ?? (ownerExists ? .ok : 3)
            if let name, let description { files[index].append(PublishedFile(name: name, description: description)) }
        }
        return zip(codes, files).map { code, files in code == .ok ? .content(files) : .status(code) }
    }

    /// nil when `user` is not registered, else whether it is connected.
    private func presence(of user: String, _ connection: PostgresConnection) async throws -> Bool? {
        let rows = try await connection.query("SELECT ip FROM directory_user WHERE name = \(user)", logger: logger)
        for try await ip in rows.decode(String?.self) { return ip != nil }
        return nil
    }

    private func connectedUsers(_ connection: PostgresConnection) async throws -> [ConnectedUser] {
        let rows = try await connection.query(
            "SELECT name, ip, port FROM directory_user WHERE ip IS NOT NULL ORDER BY name", logger: logger)
        var users: [ConnectedUser] = []
        for try await (name, ip, port) in rows.decode((String, String, String).self) {
            users.append(ConnectedUser(name: name, ip: ip, port: port))
        }
        return users
    }

    private func files(of owner: String, _ connection: PostgresConnection) async throws -> [PublishedFile] {
        let rows = try await connection.query(
            "SELECT name, description FROM directory_file WHERE owner = \(owner) ORDER BY id", logger: logger)
        var files: [PublishedFile] = []
        for try await (name, description) in rows.decode((String, String).self) {
            files.append(PublishedFile(name: name, description: description))
        }
        return files
    }

    /// What a SEARCH came to: the requester's code (not registered, not connected), or hits.
    enum SearchOutcome {
        case refused(ResultCode)
        case hits([SearchHit])
    }

    /// SEARCH: each word of the query is a range of the word index (its prefix up to the
    /// prefix followed by U+10FFFF, which sorts after every continuation in byte order); the
    /// online owners' hits come first, each group in publishing order. `requester` nil: the
    /// server's own search (its web page), nobody's presence checked.
    ///
    /// One prefix drives: the one the planner expects the fewest rows for (its statistics of
    /// the word index, kept a minute; a prefix such as `txt` or `file3`, one word in a tenth of
    /// all files, must not drive however few words it has). Its words' files are read in
    /// answer order (the word index's order: offline, then file id), merged, and each
    /// candidate is tested for the other prefixes in the file's words its row carries, a batch
    /// at a time, until enough hits are found: the work is about the hits' share of the
    /// driver's files, not the size of the other prefixes.
    ///
    /// The requester's presence, the driver's words, whether every other prefix matches a
    /// word, and the first batch are one statement: one round trip for most searches. Under
    /// the mixed load each round trip waits for a core; three of them (presence, words, batch)
    /// were most of a search's time there.
    private func search(_ text: String, requester: String?, _ connection: PostgresConnection) async throws
        -> SearchOutcome
    {
        let prefixes = Set(DirectoryRules.searchWords(text)).sorted()
        // A prefix alone drives without an estimate; a tie goes to the longer prefix.
        var estimates = [Double](repeating: 0, count: prefixes.count)
        if prefixes.count > 1 {
            for (index, prefix) in prefixes.enumerated() {
                estimates[index] = try await estimatedRows(startingWith: prefix, connection)
            }
        }
        let driver = prefixes.indices.min {
            (estimates[$0], -prefixes[$0].utf8.count) < (estimates[$1], -prefixes[$1].utf8.count)
        }!
        let others = prefixes.indices.filter { $0 != driver }.map { prefixes[$0] }
        // The share of the driver's files expected to be hits: each other prefix's rows over
        // all files (its words are about one row per file).
        var share = 1.0
        if !others.isEmpty {
            let files = try await estimatedFiles(connection)
            for index in prefixes.indices where index != driver { share *= min(1, estimates[index] / max(files, 1)) }
        }
        let wanted = DirectoryRules.maxSearchHits
        // The first batch's rows, over all the driver's words: four times the candidates
        // expected to hold the hits wanted (each batch costs a round trip, so a batch too large
        // costs less than one batch more).
        let firstBatch = Int64(min(1e12, 4 * Double(wanted) / max(share, 1e-4)))
        // 0: the first batch divides its rows among the driver's words. A driver the planner
        // expects few rows of is read whole at once instead, each word up to all of them and a
        // quarter more for the estimate's error (`file3 w999`, whose hits come later than
        // their share says, read its 16,500 rows in two round trips before).
        let driverRows = 1.25 * estimates[driver]
        var perWord: Int64 = driverRows > 4 * Double(wanted) && driverRows <= Self.rowsWorthARoundTrip
            ? Int64(driverRows) : 0
        let batch = MergedSearchStatement(requester: requester, driver: prefixes[driver], others: others)

        var hits: [SearchHit] = []
        var found = Set<Int64>()
        var after = (offline: false, id: Int64(0))  // ids start at 1
        while hits.count < wanted {
            let rows = try await connection.query(
                batch.query(after: after, perWord: perWord, firstBatch: firstBatch, wanted: wanted - hits.count),
                logger: logger)
            var bound: Int64?
            for try await (registered, connected, words, rowPerWord, rowBound, id, owner, name, description)
                in rows.decode((Bool, Bool, Int64, Int64, Int64?, Int64?, String?, String?, String?).self)
            {
                if let code = DirectoryRules.requesterCode(registered: registered, connected: connected) {
                    return .refused(code)
                }
                if words > Self.maxMergedWords {
                    let driverWords = try await self.words(startingWith: prefixes[driver], connection)
                    return .hits(try await perWordSearch(words: driverWords, others: others, connection))
                }
                perWord = rowPerWord
                bound = rowBound
                // (No owner: the file was deleted meanwhile.)
                if let id, let owner, let name, let description, found.insert(id).inserted {
                    hits.append(SearchHit(owner: owner, name: name, description: description))
                }
            }
            // No word had more: everything was read.
            guard let bound else { break }
            after = bound >= Self.offlineKeyOffset ? (true, bound - Self.offlineKeyOffset) : (false, bound)
            perWord = min(perWord * 4, 65536)
        }
        return .hits(hits)
    }

    /// How many rows of the word index a search reads in about the time a round trip to the
    /// database takes under load (0.4 µs a row against 5-10 ms a statement waits for a core
    /// under the mixed load on two cores): a driver expected to have fewer is read whole.
    static let rowsWorthARoundTrip = 20_000.0

    /// The most words a driving prefix is merged over (one index range each per batch); a
    /// prefix of more words (`w`, say) drives through ``perWordSearch(words:others:_:)``.
    static let maxMergedWords = 256

    /// One batch of a search: the driving prefix's words' files merged in answer order, read
    /// after a position, each candidate tested for every other prefix, the first hits joined
    /// with their files; with the requester's presence and the driver's word count, so that
    /// the first batch is the search's only round trip.
    ///
    /// A batch reads up to `perWord` rows of each word after the position reached; the merge of
    /// what came back is complete up to the smallest last row of a word that gave all
    /// `perWord` (a word that gave fewer has nothing more), so only that part is used and the
    /// next batch starts after it (`bound`; NULL: nothing more to read). The first batch's
    /// `perWord` is its row count over the driver's words (at least 8, at most 16,384). Nothing
    /// is read when the requester is not connected, the driver has no word or more than
    /// ``maxMergedWords``, or another prefix matches no word.
    ///
    /// Each word's rows are folded as they are read into one row (the keys of its hits, its
    /// last key, how many), rather than kept and read twice more for the bound and the hits:
    /// half the time (`file3 w999` at 10 million files, all of its 16,500 rows: 12.6 -> 6-8 ms).
    struct MergedSearchStatement {
        let sql: String
        let bindings: PostgresBindings

        init(requester: String?, driver: String, others: [String]) {
            var bindings = PostgresBindings()
            func bind(_ value: String) -> String {
                bindings.append(value)
                return "$\(bindings.count)"
            }
            let presence =
                if let requester {
                    """
                    SELECT r.name IS NOT NULL AS registered, r.ip IS NOT NULL AS connected
                    FROM (VALUES (1)) AS one (x) LEFT JOIN directory_user r ON r.name = \(bind(requester))
                    """
                } else {
                    "SELECT true AS registered, true AS connected"
                }
            let driverWords = PostgresDirectoryStore.wordsQuery(startingWith: driver, into: &bindings)
            let othersExist = others.map { prefix in
                " AND EXISTS (SELECT FROM directory_file_word WHERE word >= \(bind(prefix))"
                    + " AND word < \(bind(PostgresDirectoryStore.rangeEnd(of: prefix))))"
            }.joined()
            let isHit = "true" + PostgresDirectoryStore.otherPrefixes(others, in: "t.words", into: &bindings)
            let next = bindings.count + 1
            let (afterOffline, afterID, perWord, firstBatch, wanted) =
                ("$\(next)", "$\(next + 1)", "$\(next + 2)", "$\(next + 3)", "$\(next + 4)")
            // A row's place in answer order as one number: offline rows after every online one.
            let offset = PostgresDirectoryStore.offlineKeyOffset
            let key = "(CASE WHEN t.offline THEN t.file_id + \(offset) ELSE t.file_id END)"
            self.bindings = bindings
            self.sql = """
                \(driverWords),
                d AS MATERIALIZED (
                    SELECT word FROM w WHERE word IS NOT NULL LIMIT \(PostgresDirectoryStore.maxMergedWords + 1)),
                q AS MATERIALIZED (
                    SELECT p.registered, p.connected, n.words,
                        (CASE WHEN \(perWord)::int8 > 0 THEN \(perWord)::int8
                            ELSE greatest(8, least(16384, \(firstBatch)::int8 / greatest(n.words, 1))) END) AS per_word,
                        p.connected AND n.words BETWEEN 1 AND \(PostgresDirectoryStore.maxMergedWords)\(othersExist) AS go
                    FROM (\(presence)) AS p, (SELECT count(*) AS words FROM d) AS n),
                c AS MATERIALIZED (
                    SELECT g.hits, g.last, g.taken
                    FROM d CROSS JOIN LATERAL (
                        SELECT array_agg(t.k) FILTER (WHERE \(isHit)) AS hits, max(t.k) AS last, count(*) AS taken
                        FROM (
                            SELECT \(key) AS k, t.words FROM directory_file_word t
                            WHERE t.word = d.word AND (t.offline, t.file_id) > (\(afterOffline)::bool, \(afterID)::int8)
                            ORDER BY t.offline, t.file_id LIMIT (SELECT per_word FROM q)) AS t) AS g
                    WHERE (SELECT go FROM q)),
                b AS (SELECT min(last) FILTER (WHERE taken = (SELECT per_word FROM q)) AS bound FROM c)
                SELECT q.registered, q.connected, q.words, q.per_word, b.bound, h.k, f.owner, f.name, f.description
                FROM q CROSS JOIN b LEFT JOIN LATERAL (
                    SELECT DISTINCT hit.k FROM c CROSS JOIN unnest(c.hits) AS hit (k)
                    WHERE b.bound IS NULL OR hit.k <= b.bound
                    ORDER BY hit.k LIMIT \(wanted)::int8) AS h ON true
                LEFT JOIN directory_file f
                    ON f.id = h.k - (CASE WHEN h.k >= \(offset) THEN \(offset) ELSE 0 END)
                ORDER BY h.k
                """
        }

        /// The batch after `after` (the last key of the batch before; `(false, 0)` first),
        /// `perWord` rows a word (0: the first batch, `firstBatch` rows over the words), for
        /// up to `wanted` hits.
        func query(after: (offline: Bool, id: Int64), perWord: Int64, firstBatch: Int64, wanted: Int) -> PostgresQuery {
            var batch = bindings
            batch.append(after.offline)
            batch.append(after.id)
            batch.append(perWord)
            batch.append(firstBatch)
            batch.append(Int64(wanted))
            return PostgresQuery(unsafeSQL: sql, binds: batch)
        }
    }

    /// The distinct words of the word index that start with `prefix`, in order.
    private func words(startingWith prefix: String, _ connection: PostgresConnection) async throws -> [String] {
        var bindings = PostgresBindings()
        let sql = Self.wordsQuery(startingWith: prefix, into: &bindings) + "\nSELECT word FROM w WHERE word IS NOT NULL"
        var words: [String] = []
        for try await word in try await connection.query(PostgresQuery(unsafeSQL: sql, binds: bindings), logger: logger)
            .decode(String.self)
        {
            words.append(word)
        }
        return words
    }

    /// `WITH RECURSIVE w (word)`: the distinct words of the word index that start with
    /// `prefix`, in order, by a loose index scan (one index descent per word, however many
    /// files have it), then NULL. Binds the prefix and its range's end into `bindings`.
    static func wordsQuery(startingWith prefix: String, into bindings: inout PostgresBindings) -> String {
        bindings.append(prefix)
        let start = "$\(bindings.count)"
        bindings.append(rangeEnd(of: prefix))
        let stop = "$\(bindings.count)"
        return """
            WITH RECURSIVE w (word) AS (
                SELECT min(word) FROM directory_file_word WHERE word >= \(start) AND word < \(stop)
                UNION ALL
                SELECT (SELECT min(t.word) FROM directory_file_word t WHERE t.word > w.word AND t.word < \(stop))
                FROM w WHERE w.word IS NOT NULL)
            """
    }

    /// How many rows of the word index the planner expects for `prefix` (from its statistics:
    /// planning only, nothing is read).
    ///
    /// Kept a minute per prefix, then asked again in the background (`remembered(_:on:ask:)`):
    /// the statistics change only when autovacuum analyzes the table, an estimate only chooses
    /// how the search runs (never what it finds), and a popular search then costs a round trip
    /// less per other prefix.
    private func estimatedRows(startingWith prefix: String, _ connection: PostgresConnection) async throws -> Double {
        let logger = self.logger
        return try await remembered(.rows(prefix: prefix), on: connection) { connection in
            let end = Self.rangeEnd(of: prefix)
            let rows = try await connection.query(
                "EXPLAIN (FORMAT JSON) SELECT 1 FROM directory_file_word WHERE word >= \(prefix) AND word < \(end)",
                logger: logger)
            var estimate = Double.infinity
            for try await plan in rows.decode(String.self) {
                if let range = plan.range(of: "\"Plan Rows\": ") {
                    estimate = Double(plan[range.upperBound...].prefix { $0.isNumber || $0 == "." }) ?? .infinity
                }
            }
            return estimate
        }
    }

    /// How many files the planner's statistics count (kept by autovacuum and ANALYZE), asked
    /// again at most once a minute, in the background: an estimate, and a round trip less per
    /// search.
    private func estimatedFiles(_ connection: PostgresConnection) async throws -> Double {
        let logger = self.logger
        return try await remembered(.files, on: connection) { connection in
            let rows = try await connection.query(
                "SELECT reltuples::float8 FROM pg_class WHERE oid = 'directory_file'::regclass", logger: logger)
            var files = 0.0
            for try await count in rows.decode(Double.self) { files = count }
            return files
        }
    }

    /// A planner's estimate SEARCH uses: the files, or the word index's rows of a prefix.
    enum Estimate: Hashable {
        case files
        case rows(prefix: String)
    }

    /// `estimate` as last asked. Only an estimate never asked is `ask`ed on `connection`, while
    /// the search waits; one asked more than ``estimateLifetime`` ago is used as it is, and
    /// asked again on a connection of its own in the background for the searches after. Under
    /// the mixed load each round trip costs a search several milliseconds, and a search of two
    /// words would otherwise pay three more once a minute: enough to be the slowest of a
    /// hundred. Bounded: past 10,000 estimates the cache starts again.
    private func remembered(
        _ estimate: Estimate, on connection: PostgresConnection,
        ask: @escaping @Sendable (PostgresConnection) async throws -> Double
    ) async throws -> Double {
        let now = ContinuousClock.now
        let lifetime = settings.estimateLifetime
        let known = estimates.withLock { known -> (value: Double, stale: Bool)? in
            guard let entry = known[estimate] else { return nil }
            guard now - entry.at >= lifetime else { return (entry.value, false) }
            // This search asks again; the ones until the answer is back use the value as well.
            known[estimate]!.at = now
            return (entry.value, true)
        }
        if let known {
            if known.stale {
                // Within the store's deadline, as every statement: a database that stopped
                // answering leaves the old value in use, asked again a lifetime later.
                Task {
                    guard
                        let value = try? await Self.withDeadline(self.settings.timeout, {
                            try await self.client.withConnection { try await ask($0) }
                        })
                    else { return }
                    self.estimates.withLock { $0[estimate] = (value, .now) }
                }
            }
            return known.value
        }
        let value = try await ask(connection)
        estimates.withLock { known in
            if known.count >= 10_000 { known.removeAll() }
            known[estimate] = (value, now)
        }
        return value
    }

    /// The planner's estimate of how many rows of the word index a prefix has, as remembered
    /// now (nil when never asked); for tests.
    func rememberedEstimate(ofRowsStartingWith prefix: String) -> Double? {
        estimates.withLock { $0[.rows(prefix: prefix)]?.value }
    }

    /// Where `prefix`'s range of the word index ends: the prefix followed by U+10FFFF, which
    /// sorts after every continuation in byte order.
    static func rangeEnd(of prefix: String) -> String {
        prefix + "\u{10FFFF}"
    }

    /// The conditions (each after ` AND `) that a row's file has a word starting with each of
    /// `prefixes`, tested in its `words` column (an SQL expression; see ``wordsColumn(_:)``):
    /// a string search in what the row already holds, nothing more read.
    static func otherPrefixes(_ prefixes: [String], in words: String, into bindings: inout PostgresBindings) -> String {
        prefixes.map { prefix in
            bindings.append(" " + prefix)
            return " AND strpos(\(words), $\(bindings.count)) > 0"
        }.joined()
    }

    /// Added to an offline row's file id in `mergedSearch`'s order key (ids stay far below).
    static let offlineKeyOffset: Int64 = 1 << 62

    /// The first hits for a driving prefix of very many words: each word's first hits (tested
    /// for the others in its rows) in one statement, merged.
    private func perWordSearch(words: [String], others: [String], _ connection: PostgresConnection) async throws
        -> [SearchHit]
    {
        var bindings = PostgresBindings()
        bindings.append(words)
        let conditions = Self.otherPrefixes(others, in: "t.words", into: &bindings)
        bindings.append(DirectoryRules.maxSearchHits)
        let limit = "$\(bindings.count)"
        let sql = """
            SELECT f.owner, f.name, f.description FROM (
                SELECT DISTINCT c.file_id, c.offline FROM unnest($1::text[]) AS d (word)
                CROSS JOIN LATERAL (
                    SELECT t.file_id, t.offline FROM directory_file_word t
                    WHERE t.word = d.word\(conditions)
                    ORDER BY t.offline, t.file_id LIMIT \(limit)) AS c
                ORDER BY c.offline, c.file_id LIMIT \(limit)) AS m
            JOIN directory_file f ON f.id = m.file_id
            ORDER BY m.offline, m.file_id
            """
        let rows = try await connection.query(PostgresQuery(unsafeSQL: sql, binds: bindings), logger: logger)
        var hits: [SearchHit] = []
        for try await (owner, name, description) in rows.decode((String, String, String).self) {
            hits.append(SearchHit(owner: owner, name: name, description: description))
        }
        return hits
    }

    // MARK: Reads for the server itself

    public func registeredUsers() async throws -> [String] {
        try await serverRead { connection in
            var names: [String] = []
            for try await name in try await connection.query(
                "SELECT name FROM directory_user ORDER BY name", logger: self.logger
            ).decode(String.self) {
                names.append(name)
            }
            return names
        }
    }

    public func connectedUsers() async throws -> [ConnectedUser] {
        try await serverRead { connection in try await self.connectedUsers(connection) }
    }

    public func holdControl(_ users: [ConnectedUser], until: Date) async throws {
        let names = users.map(\.name)
        try await serverRead { connection in
            _ = try await connection.query(
                "UPDATE directory_user SET control_until = \(until) WHERE name = ANY(\(names)) AND ip IS NOT NULL",
                logger: self.logger)
        }
    }

    public func isControlHeld(_ user: String) async throws -> Bool {
        try await serverRead { connection in
            let rows = try await connection.query(
                "SELECT control_until > now() FROM directory_user WHERE name = \(user) AND ip IS NOT NULL",
                logger: self.logger)
            for try await held in rows.decode(Bool?.self) { return held ?? false }
            return false
        }
    }

    /// The channel on which the servers sharing this database pass control messages on.
    static let controlChannel = "p2p_control"

    public func forwardControl(_ fields: [String], to user: String) async throws {
        let payload = String(decoding: try JSONEncoder().encode([user] + fields), as: UTF8.self)
        try await serverRead { connection in
            _ = try await connection.query("SELECT pg_notify(\(Self.controlChannel), \(payload))", logger: self.logger)
        }
    }

    public func receiveForwardedControl(_ deliver: @escaping @Sendable (String, [String]) -> Void) async throws {
        guard !isClosed else { throw PostgresStoreError.closed }
        do {
            try await client.withConnection { connection in
                try await connection.listen(on: Self.controlChannel) { notifications in
                    for try await notification in notifications {
                        guard
                            let fields = try? JSONDecoder().decode([String].self, from: Data(notification.payload.utf8)),
                            let user = fields.first
                        else { continue }
                        deliver(user, Array(fields.dropFirst()))
                    }
                }
            }
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            // The caller logs it: say what happened, not postgres-nio's generic description.
            throw PostgresStoreError.unavailable(Self.describe(error))
        }
    }

    /// The users `checker` checks this round: its share of the connected users (their count
    /// over the servers alive, which renew their row here every round), its own claims first.
    ///
    /// It keeps up to a tenth more than its share of what it held (so that users connecting
    /// and leaving do not move others between servers, whose failures in a row would start
    /// again) and gives back the rest at once; unclaimed users (new, given back, or whose
    /// server died and let its claims run out) are taken up to the share. A server joining
    /// gets its share within two rounds of each of the others. Rows another server is
    /// claiming right now are skipped, not waited for.
    public func usersToCheck(checker: String, lease: TimeInterval) async throws -> [ConnectedUser] {
        try await serverWork(doing: "claiming the peers to check failed") {
            try await self.claimUsersToCheck(checker: checker, lease: lease)
        }
    }

    /// Connected users whose peers may be checked: no server holds their control connection.
    static let checkable = "ip IS NOT NULL AND (control_until IS NULL OR control_until < now())"

    private func claimUsersToCheck(checker: String, lease: TimeInterval) async throws -> [ConnectedUser] {
        try await transaction { connection in
            try await connection.query(
                """
                INSERT INTO directory_checker (id, alive_until) VALUES (\(checker), now() + make_interval(secs => \(lease)))
                ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until
                """, logger: self.logger)
            // A server gone for a day is forgotten.
            try await connection.query(
                "DELETE FROM directory_checker WHERE alive_until < now() - interval '1 day'", logger: self.logger)
            let rows = try await connection.query(
                """
                WITH share AS (
                    SELECT ceil(
                        (SELECT count(*) FROM directory_user WHERE \(unescaped: Self.checkable))::float8
                        / greatest(1, (SELECT count(*) FROM directory_checker WHERE alive_until > now())))::bigint AS n),
                kept AS (
                    SELECT name FROM directory_user
                    WHERE check_by = \(checker) AND \(unescaped: Self.checkable)
                    ORDER BY name LIMIT (SELECT n + n / 10 FROM share)
                    FOR UPDATE SKIP LOCKED),
                taken AS (
                    SELECT name FROM directory_user
                    WHERE \(unescaped: Self.checkable) AND check_by IS DISTINCT FROM \(checker) AND (check_until IS NULL OR check_until < now())
                    ORDER BY name LIMIT (SELECT greatest(0, n - (SELECT count(*) FROM kept)) FROM share)
                    FOR UPDATE SKIP LOCKED)
                UPDATE directory_user
                SET check_by = \(checker), check_until = now() + make_interval(secs => \(lease))
                WHERE name IN (SELECT name FROM kept UNION ALL SELECT name FROM taken)
                RETURNING name, ip, port
                """, logger: self.logger)
            var users: [ConnectedUser] = []
            for try await (name, ip, port) in rows.decode((String, String?, String?).self) {
                if let ip, let port { users.append(ConnectedUser(name: name, ip: ip, port: port)) }
            }
            // What it held beyond that goes back to the others now, not when the lease ends:
            // its claims not renewed above (now() is the transaction's start, so a renewed
            // claim ends exactly at now() + lease).
            try await connection.query(
                """
                UPDATE directory_user SET check_by = NULL, check_until = NULL
                WHERE check_by = \(checker) AND check_until < now() + make_interval(secs => \(lease))
                """, logger: self.logger)
            return users.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        }
    }

    public func stopChecking(checker: String) async throws {
        try await serverRead { connection in
            _ = try await connection.query(
                """
                WITH gone AS (DELETE FROM directory_checker WHERE id = \(checker))
                UPDATE directory_user SET check_by = NULL, check_until = NULL WHERE check_by = \(checker)
                """, logger: self.logger)
        }
    }

    public func presence(of user: String) async throws -> Presence {
        try await serverRead { connection in
            let rows = try await connection.query(
                "SELECT ip, port FROM directory_user WHERE name = \(user)", logger: self.logger)
            for try await (ip, port) in rows.decode((String?, String?).self) {
                return ip.map { .online(ip: $0, port: port ?? "") } ?? .offline
            }
            return .unknown
        }
    }

    public func boundKey(of user: String) async throws -> String? {
        try await serverRead { connection in
            let rows = try await connection.query(
                "SELECT key FROM directory_user WHERE name = \(user)", logger: self.logger)
            for try await key in rows.decode(String?.self) { return key }
            return nil
        }
    }

    public func sessionSecret() async throws -> String {
        let made = Data((0..<32).map { _ in UInt8.random(in: .min ... .max) }).base64EncodedString()
        return try await serverWork(doing: "reading the sessions' secret failed") {
            try await self.transaction { connection in
                try await connection.query(
                    "INSERT INTO directory_secret (name, value) VALUES ('sessions', \(made)) ON CONFLICT (name) DO NOTHING",
                    logger: self.logger)
                let rows = try await connection.query(
                    "SELECT value FROM directory_secret WHERE name = 'sessions'", logger: self.logger)
                for try await value in rows.decode(String.self) { return value }
                throw PostgresStoreError.unavailable("no sessions' secret")
            }
        }
    }

    public func unbind(_ user: String) async throws -> Bool {
        try await serverWork(doing: "an unbind failed") {
            try await self.transaction { connection in
                try await Self.count(
                    connection, "UPDATE directory_user SET key = NULL WHERE name = \(user) RETURNING 1",
                    logger: self.logger) == 1
            }
        }
    }

    public func overview() async throws -> DirectoryOverview {
        try await serverRead { connection in
            let rows = try await connection.query(
                """
                SELECT (SELECT count(*) FROM directory_user), (SELECT count(*) FROM directory_user WHERE ip IS NOT NULL),
                    (SELECT count(*) FROM directory_file)
                """, logger: self.logger)
            for try await (users, connected, files) in rows.decode((Int, Int, Int).self) {
                return DirectoryOverview(users: users, connectedUsers: connected, files: files)
            }
            return DirectoryOverview(users: 0, connectedUsers: 0, files: 0)
        }
    }

    public func files(of owner: String) async throws -> [PublishedFile]? {
        try await serverRead { connection in
            guard try await self.presence(of: owner, connection) != nil else { return nil }
            return try await self.files(of: owner, connection)
        }
    }

    public func search(_ query: String) async throws -> [SearchHit] {
        try await serverRead { connection in
            guard !DirectoryRules.searchWords(query).isEmpty,
                case .hits(let hits) = try await self.search(query, requester: nil, connection)
            else { return [] }
            return hits
        }
    }

    private func serverRead<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await serverWork(doing: "a read failed") {
            try await self.client.withConnection { connection in try await body(connection) }
        }
    }

    /// The server's own `work` (not a client's request), within the store's deadline; a
    /// failure is recorded as an outage and thrown as ``PostgresStoreError/unavailable(_:)``.
    private func serverWork<T: Sendable>(
        doing what: String, _ work: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        guard !isClosed else { throw PostgresStoreError.closed }
        do {
            let value = try await Self.withDeadline(settings.timeout, work)
            succeeded()
            return value
        } catch {
            failed(error, doing: what)
            throw PostgresStoreError.unavailable(Self.describe(error))
        }
    }

    // MARK: Copying a directory in

    /// Writes `contents` into this (empty) directory in one transaction; with `replacing`, what
    /// is there is deleted first. Throws ``PostgresStoreError/notEmpty(users:)`` when the
    /// directory holds users and `replacing` is false: nothing is changed then.
    /// Copies a directory in, a page at a time, in one transaction: nothing of it is kept
    /// unless all of it is. Refuses a directory that already holds users unless `replacing`.
    /// Returns how many users (connected among them) and files were copied.
    public func load(
        from source: any DirectoryContentsSource, replacing: Bool, pageSize: Int = 5_000
    ) async throws -> (users: Int, connected: Int, files: Int) {
        try await transaction { connection in
            if replacing {
                try await connection.query("DELETE FROM directory_user", logger: self.logger)
            } else {
                let rows = try await connection.query("SELECT count(*) FROM directory_user", logger: self.logger)
                for try await users in rows.decode(Int.self) where users > 0 {
                    throw PostgresStoreError.notEmpty(users: users)
                }
            }
            var counts = (users: 0, connected: 0, files: 0)
            // Each page as arrays: one statement per page rather than one per row.
            var lastName: String?
            while true {
                let part = try await source.users(after: lastName, limit: pageSize)
                guard let last = part.last else { break }
                lastName = last.name
                counts.users += part.count
                counts.connected += part.filter { $0.ip != nil }.count
                try await connection.query(
                    """
                    INSERT INTO directory_user (name, ip, port, key)
                    SELECT name, nullif(ip, ''), nullif(port, ''), nullif(key, '')
                    FROM unnest(\(part.map(\.name))::text[], \(part.map { $0.ip ?? "" })::text[],
                        \(part.map { $0.port ?? "" })::text[], \(part.map { $0.key ?? "" })::text[])
                        AS rows (name, ip, port, key)
                    """, logger: self.logger)
            }
            var lastID: Int64 = 0
            while true {
                let (part, last) = try await source.files(after: lastID, limit: pageSize)
                guard !part.isEmpty else { break }
                lastID = last
                counts.files += part.count
                // Ids come back in the order of the rows inserted (WITH ORDINALITY keeps it).
                let rows = try await connection.query(
                    """
                    INSERT INTO directory_file (owner, name, description)
                    SELECT owner, name, description
                    FROM unnest(\(part.map(\.owner))::text[], \(part.map(\.name))::text[], \(part.map(\.description))::text[])
                        WITH ORDINALITY AS rows (owner, name, description, position)
                    ORDER BY position
                    RETURNING id
                    """, logger: self.logger)
                var ids: [Int64] = []
                for try await id in rows.decode(Int64.self) { ids.append(id) }
                ids.sort()
                var wordIDs: [Int64] = []
                var words: [String] = []
                var fileWords: [String] = []
                for (file, id) in zip(part, ids) {
                    let each = Self.searchWords(name: file.name, description: file.description)
                    let column = Self.wordsColumn(each)
                    for word in each {
                        wordIDs.append(id)
                        words.append(word)
                        fileWords.append(column)
                    }
                }
                try await connection.query(
                    """
                    INSERT INTO directory_file_word (word, file_id, offline, words)
                    SELECT w.word, w.id, u.ip IS NULL, w.words
                    FROM unnest(\(words)::text[], \(wordIDs)::bigint[], \(fileWords)::text[]) AS w (word, id, words)
                    JOIN directory_file f ON f.id = w.id JOIN directory_user u ON u.name = f.owner
                    """, logger: self.logger)
            }
            return counts
        }
    }

    // MARK: Transactions, deadlines, outages

    /// Runs `body` in a transaction on one connection, again (up to ``maxAttempts`` times) when
    /// it fails with a serialization failure or a deadlock. An error in `body` rolls back.
    private func transaction<T>(
        _ body: (PostgresConnection) async throws -> sending T
    ) async throws -> sending T {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await client.withConnection { connection in
                    try await connection.query("BEGIN", logger: logger)
                    do {
                        let value = try await body(connection)
                        try await connection.query("COMMIT", logger: logger)
                        return value
                    } catch {
                        _ = try? await connection.query("ROLLBACK", logger: logger)
                        throw error
                    }
                }
            } catch where attempt < Self.maxAttempts && Self.isRetryable(error) {
                // A little random, so that the transactions that collided do not collide again.
                try await Task.sleep(for: .milliseconds(Int.random(in: 1...(2 << min(attempt, 6)))))
            }
        }
    }

    /// Runs `body`, giving up after `timeout`: the caller gets ``PostgresStoreError/timedOut``
    /// and `body`'s task is cancelled and left to end by itself (a database that stopped
    /// answering may never answer a query already sent, so nothing waits for it).
    static func withDeadline<T: Sendable>(
        _ timeout: Duration, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let race = DeadlineRace<T>()
        return try await withCheckedThrowingContinuation { continuation in
            race.start(
                continuation,
                work: Task {
                    do {
                        race.finish(.success(try await body()))
                    } catch {
                        race.finish(.failure(error))
                    }
                },
                timer: Task {
                    try? await Task.sleep(for: timeout)
                    if !Task.isCancelled { race.finish(.failure(PostgresStoreError.timedOut)) }
                })
        }
    }

    private func succeeded() {
        let wasFailing = state.withLock { state in
            defer { state.failing = false }
            return state.failing
        }
        if wasFailing { logger.notice("PostgreSQL at \(url) answers again") }
    }

    private func failed(_ error: any Error, doing what: String) {
        let wasFailing = state.withLock { state in
            defer { state.failing = true }
            return state.failing
        }
        guard !wasFailing else { return }
        logger.error(
            "PostgreSQL at \(url) failed (\(what)): \(Self.describe(error)); requests get their error codes until it answers"
        )
    }

    static func sqlState(of error: any Error) -> String? {
        if let error = error as? PSQLError { return error.serverInfo?[.sqlState] }
        return nil
    }

    /// Serialization failure and deadlock: the transaction did nothing and can run again.
    static func isRetryable(_ error: any Error) -> Bool {
        ["40001", "40P01"].contains(sqlState(of: error))
    }

    /// Two servers creating one table at the same moment: one of them gets a unique violation
    /// on the system catalog, or finds the table there.
    static func isConcurrentCreation(_ error: any Error) -> Bool {
        ["23505", "42P07"].contains(sqlState(of: error))
    }

    /// A readable line for an error (postgres-nio's own description hides everything).
    static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let info = error.serverInfo {
                return "\(info[.message] ?? "error") (SQLSTATE \(info[.sqlState] ?? "?"))"
            }
            if let underlying = error.underlying { return "\(error.code): \(underlying)" }
            return "\(error.code)"
        }
        return "\(error)"
    }

    /// Runs `sql` and returns how many rows it gave back.
    private static func count(_ connection: PostgresConnection, _ sql: PostgresQuery, logger: Logger) async throws -> Int {
        var count = 0
        for try await _ in try await connection.query(sql, logger: logger) { count += 1 }
        return count
    }
}

/// The first of a piece of work and its timer to finish resumes the caller; the other is
/// cancelled.
private final class DeadlineRace<T: Sendable>: Sendable {
    private struct Parts {
        var continuation: CheckedContinuation<T, any Error>?
        var result: Result<T, any Error>?
        var work: Task<Void, Never>?
        var timer: Task<Void, Never>?
    }
    private let parts = Mutex(Parts())

    func start(_ continuation: CheckedContinuation<T, any Error>, work: Task<Void, Never>, timer: Task<Void, Never>) {
        let early = parts.withLock { parts -> Result<T, any Error>? in
            parts.work = work
            parts.timer = timer
            if let result = parts.result { return result }
            parts.continuation = continuation
            return nil
        }
        if let early {
            work.cancel()
            timer.cancel()
            continuation.resume(with: early)
        }
    }

    func finish(_ result: Result<T, any Error>) {
        let taken = parts.withLock { parts -> (CheckedContinuation<T, any Error>?, Task<Void, Never>?, Task<Void, Never>?)? in
            guard parts.result == nil else { return nil }
            parts.result = result
            defer { parts.continuation = nil }
            return (parts.continuation, parts.work, parts.timer)
        }
        guard let (continuation, work, timer) = taken else { return }
        work?.cancel()
        timer?.cancel()
        continuation?.resume(with: result)
    }
}

extension DirectoryChange {
    /// A plain REGISTER (a keyed one binds its name: decided alone).
    fileprivate var isRegister: Bool {
        if case .register = self { true } else { false }
    }
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
