import P2PDirectory
import Foundation
import GRDB
import Logging
import P2POperationLog
import P2PProtocol
import Synchronization

/// The embedded directory store: one SQLite file (WAL mode, through GRDB), the default.
///
/// Nothing of the directory is held in memory: every change is decided in SQL on the database
/// itself, by statements whose row counts give the result code (an insert that a unique key
/// turns into nothing is "already registered"), the way a shared database decides them, and
/// every read is a query on an indexed table. Start-up costs the same for ten users and for
/// ten million files, and memory is SQLite's page caches, plus the search bitmaps
/// (``SearchBitmaps``), a cache of the index that searches build as they go.
///
/// Changes go through one writer thread. It takes every batch waiting for it (up to
/// ``maxBatch`` changes), decides them in order inside one transaction, commits, and only then
/// answers them (group commit: one fsync for all of them). The write-ahead log is synced at
/// every commit (`synchronous=FULL`), so a change answered 0 survives a crash or power loss at
/// any moment. Reads run on GRDB's reader connections and see only committed transactions.
/// Copying the write-ahead log into the database file is left to a ``WALCheckpointer``, off
/// the commit path.
public final class SQLiteDirectoryStore: DirectoryStore, DirectoryContentsSource {
    /// The file the directory lives in, inside a data folder.
    public static let fileName = "directory.sqlite"

    /// The most changes committed in one transaction (a batch is never split, so one can be
    /// bigger).
    static let maxBatch = 1024

    /// The database file.
    public let path: String
    /// Held from before the file is opened until it is closed: one store per file.
    private let fileLock: StoreFileLock
    private let pool: DatabasePool
    private let checkpointer: WALCheckpointer
    private let pending = Mutex(PendingWrites())
    /// ``directoryVersion`` and ``changes(since:)``: every commit that changed something is
    /// recorded before its changes are answered. Only this server's writer changes the file.
    private let journal = DirectoryChangeJournal()
    /// Runs the transactions; blocking SQLite calls never touch the NIO event loops or the
    /// Swift concurrency pool.
    private let writerQueue = DispatchQueue(label: "p2p.directory.writer", qos: .userInitiated)
    /// Reader threads, each taking every batch of queries waiting for it into one read
    /// transaction: one for LIST_CONTENT, one for LIST_USERS, which reads every connected user
    /// and so on a large directory takes a while (the short reads never wait behind it).
    private let contentReader: BatchingWorker<PendingRead>
    private let usersReader: BatchingWorker<PendingRead>
    /// SEARCH has a reader of its own too: a query whose words are very common reads long
    /// lists from the index.
    private let searchReader: BatchingWorker<PendingRead>
    /// The search reader's own read-only connection, with a cache big enough for the index
    /// pages and rows a search walks (see `searchCacheKiB`).
    private let searchConnection: DatabaseQueue
    /// Bitmaps of the frequent prefixes, which spare a search the long lists of the index.
    let searchBitmaps: SearchBitmaps
    private let logger: Logger
    private let metrics: DirectoryMetrics
    /// Since when commits have been failing (a full disk, say), and how many changes were
    /// refused since: logged when it starts and when it ends, not at every failed commit.
    private let writeFailures = Mutex<WriteFailures?>(nil)

    private struct WriteFailures {
        var since: ContinuousClock.Instant
        var refused: Int
    }

    /// Opens (creating if needed) `directory.sqlite` in `dataDirectory`.
    public convenience init(dataDirectory: String, logger: Logger = Logger(label: "p2p.directory.sqlite")) throws {
        try self.init(
            path: (dataDirectory as NSString).appendingPathComponent(Self.fileName), logger: logger)
    }

    /// Opens (creating it and its folder if needed) the database file at `path`.
    public convenience init(
        path: String, logger: Logger = Logger(label: "p2p.directory.sqlite"), metrics: DirectoryMetrics = .none
    ) throws {
        try self.init(path: path, checkpointing: WALCheckpointer.Settings(), logger: logger, metrics: metrics)
    }

    init(
        path: String, checkpointing: WALCheckpointer.Settings, searchBitmaps: SearchBitmaps.Settings = .init(),
        logger: Logger, metrics: DirectoryMetrics = .none
    ) throws {
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        self.path = path
        // Before SQLite touches the file: a second server does not even run the migrations.
        fileLock = try StoreFileLock(databasePath: path)
        self.logger = logger
        self.metrics = metrics
        var configuration = Configuration()
        configuration.foreignKeysEnabled = true
        configuration.label = "directory"
        configuration.prepareDatabase { db in
            // Commits never copy the write-ahead log into the database file: the checkpointer does.
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 0")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        try pool.writeWithoutTransaction { db in
            // FULL: the write-ahead log is synced at every commit, so a committed change also
            // survives power loss, not just a crash of the process. Set here, on the writer,
            // because the pool sets NORMAL when it turns WAL on, after `prepareDatabase` has run.
            try db.execute(sql: "PRAGMA synchronous = FULL")
            // The writer touches the indexes of every table; a bigger cache than SQLite's
            // 2 MiB keeps their upper levels in memory on a large directory. (The readers keep
            // the default: what they miss comes from the operating system's file cache.)
            try db.execute(sql: "PRAGMA cache_size = -32768")
        }
        try Self.migrator.migrate(pool)
        // Files another program wrote (the sqlite3 shell, say) are noted but not yet indexed.
        try pool.write { db in try Self.updateSearchIndex(db) }
        checkpointer = try WALCheckpointer(path: path, settings: checkpointing)
        var searchConfiguration = Configuration()
        searchConfiguration.readonly = true
        searchConfiguration.label = "directory-search"
        searchConfiguration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA cache_size = -\(Self.searchCacheKiB)")
        }
        searchConnection = try DatabaseQueue(path: path, configuration: searchConfiguration)
        self.searchBitmaps = SearchBitmaps(settings: searchBitmaps, reader: pool, logger: logger)
        let pool = self.pool
        func reader(
            _ name: String, niceness: Int32, connection: any DatabaseReader, bitmaps: SearchBitmaps? = nil
        ) -> BatchingWorker<PendingRead> {
            let worker = BatchingWorker<PendingRead>(
                name: name, capacity: 100_000, maxBatch: 256, gatherTime: 0, niceness: niceness
            ) { reads, _ in
                Self.answer(reads, from: connection, bitmaps: bitmaps, logger: logger)
                return .processed
            }
            worker.start()
            return worker
        }
        contentReader = reader("p2p-directory-reader", niceness: 0, connection: pool)
        // A LIST_USERS of a large directory (and a SEARCH) keeps a thread busy for a while: on
        // threads of their own they do not hold up the short reads behind them (in
        // `make bench`, LIST_CONTENT's p99 while LIST_USERS of 100,000 users ran back to back
        // went from 73-128 ms to 16-18 ms). A lower priority for them was tried and dropped:
        // the LIST_USERS starved.
        usersReader = reader("p2p-directory-users-reader", niceness: 0, connection: pool)
        searchReader = reader(
            "p2p-directory-search-reader", niceness: 0, connection: searchConnection, bitmaps: self.searchBitmaps)
    }

    /// The search connection's page cache. The pool's readers keep SQLite's 2 MiB and read what
    /// they miss from the operating system's file cache, one system call and copy per page; a
    /// search walks a thousand or more index pages and rows, so most of its time went there
    /// (`file3 w999` at 10 million files: 23 ms with 2 MiB, 13 ms with this cache warm).
    static let searchCacheKiB = 65_536

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            // ip and port are NULL while the user is not connected.
            try db.execute(
                sql: """
                    CREATE TABLE user (
                        name TEXT PRIMARY KEY NOT NULL,
                        ip TEXT,
                        port TEXT
                    );
                    CREATE TABLE file (
                        id INTEGER PRIMARY KEY,
                        owner TEXT NOT NULL REFERENCES user(name) ON DELETE CASCADE,
                        name TEXT NOT NULL,
                        description TEXT NOT NULL,
                        UNIQUE (owner, name)
                    );
                    """)
        }
        migrator.registerMigration("v2: index of the connected users") { db in
            // LIST_USERS reads the connected users in name order from this index alone, without
            // visiting the users that are not connected.
            try db.execute(sql: "CREATE INDEX user_connected ON user (name, ip, port) WHERE ip IS NOT NULL")
        }
        migrator.registerMigration("v3: search index") { db in
            // SEARCH: a full-text index of the file names and descriptions (FTS5; the words are
            // runs of letters and digits, case and diacritics folded, as
            // `DirectoryRules.searchWords`), kept up to date by triggers and filled from what is
            // already there. `detail = none`: the index keeps which files hold a word, not
            // where, which is all an AND of prefixes needs, and makes it several times
            // smaller and cheaper to update than the default. `prefix = '2 3'`: words of 2
            // and 3 letters are indexed as such too, so that a short prefix, which matches many
            // words, is read as one list instead of the merge of all of them (at 3 million
            // files, `txt w42` took 0.56 s without, under 10 ms with).
            try db.execute(
                sql: """
                    CREATE VIRTUAL TABLE file_search USING fts5(
                        name, description, content = 'file', content_rowid = 'id',
                        tokenize = 'unicode61 remove_diacritics 2', detail = 'none', columnsize = 0,
                        prefix = '2 3');
                    CREATE TRIGGER file_search_insert AFTER INSERT ON file BEGIN
                        INSERT INTO file_search (rowid, name, description) VALUES (new.id, new.name, new.description);
                    END;
                    CREATE TRIGGER file_search_delete AFTER DELETE ON file BEGIN
                        INSERT INTO file_search (file_search, rowid, name, description)
                        VALUES ('delete', old.id, old.name, old.description);
                    END;
                    INSERT INTO file_search (file_search) VALUES ('rebuild');
                    """)
        }
        migrator.registerMigration("v4: prefix lists up to 6 letters, the index's words") { db in
            // A prefix longer than the longest prefix list makes FTS5 gather and merge, before
            // the first hit, the lists of every word it covers: `file3` (a word in a million
            // of 10 million files) took 0.56 s with lists for 2 and 3 letters. With lists up to
            // 6 letters every prefix a person types is one list read lazily (5 ms), for an
            // index 23% larger and PUBLISH no slower measurably (one insert: 452 vs 467 us;
            // a bulk fill 1.7 times longer). Longer prefixes go through the word list
            // (`matchExpression`).
            try db.execute(
                sql: """
                    DROP TRIGGER file_search_insert;
                    DROP TRIGGER file_search_delete;
                    DROP TABLE file_search;
                    CREATE VIRTUAL TABLE file_search USING fts5(
                        name, description, content = 'file', content_rowid = 'id',
                        tokenize = 'unicode61 remove_diacritics 2', detail = 'none', columnsize = 0,
                        prefix = '2 3 4 5 6');
                    CREATE TRIGGER file_search_insert AFTER INSERT ON file BEGIN
                        INSERT INTO file_search (rowid, name, description) VALUES (new.id, new.name, new.description);
                    END;
                    CREATE TRIGGER file_search_delete AFTER DELETE ON file BEGIN
                        INSERT INTO file_search (file_search, rowid, name, description)
                        VALUES ('delete', old.id, old.name, old.description);
                    END;
                    INSERT INTO file_search (file_search) VALUES ('rebuild');
                    CREATE VIRTUAL TABLE file_search_words USING fts5vocab(file_search, 'row');
                    """)
        }
        migrator.registerMigration("v5: search index updated once per transaction") { db in
            // FTS5 writes what it has gathered to disk at every savepoint, and SQLite opens one
            // for each statement that fires a trigger: a trigger that inserted each file into
            // the index made one index segment per PUBLISH, and the index spent its time merging
            // them (a file and its index took 28 µs to write against 11 for the file alone;
            // noted and indexed once per 20 files, 15). The triggers now only note what
            // changed, in a plain table; the writer moves the notes into the index with one
            // statement per transaction (`updateSearchIndex`), so that the index gets one
            // segment per commit and never lags behind what a search can see.
            try db.execute(
                sql: """
                    DROP TRIGGER file_search_insert;
                    DROP TRIGGER file_search_delete;
                    CREATE TABLE file_search_queue (
                        file INTEGER NOT NULL,
                        gone INTEGER NOT NULL,
                        name TEXT,
                        description TEXT,
                        PRIMARY KEY (file, gone)
                    ) WITHOUT ROWID;
                    CREATE TRIGGER file_search_insert AFTER INSERT ON file BEGIN
                        INSERT INTO file_search_queue (file, gone) VALUES (new.id, 0);
                    END;
                    CREATE TRIGGER file_search_delete AFTER DELETE ON file BEGIN
                        INSERT INTO file_search_queue (file, gone, name, description)
                            SELECT old.id, 1, old.name, old.description
                            WHERE NOT EXISTS (SELECT 1 FROM file_search_queue WHERE file = old.id AND gone = 0);
                        DELETE FROM file_search_queue WHERE file = old.id AND gone = 0;
                    END;
                    """)
        }
        migrator.registerMigration("v6: keys") { db in
            // The key a user is bound to (docs/PROTOCOL.md, "Keys"), NULL while unbound.
            try db.execute(sql: "ALTER TABLE user ADD COLUMN key TEXT")
            // What the keyed sessions are sealed with (``DirectoryStore/sessionSecret()``).
            try db.execute(sql: "CREATE TABLE secret (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
        }
        return migrator
    }

    public func close() async throws {
        let wasOpen = pending.withLock { pending in
            defer { pending.closed = true }
            return !pending.closed
        }
        guard wasOpen else { return }
        // On the writer's queue: the batches already queued are committed and answered first,
        // and the blocking calls stay off the concurrency pool.
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, any Error>, Never>) in
            writerQueue.async {
                continuation.resume(returning: Result { try self.closeOnWriter() })
            }
        }
        try result.get()
    }

    private func closeOnWriter() throws {
        // Last: the next process may open the file once this one has let go of it.
        defer { fileLock.release() }
        // Queued reads are answered before the pool closes.
        contentReader.stop()
        usersReader.stop()
        searchReader.stop()
        searchBitmaps.close()
        try? searchConnection.close()
        let checkpointerClosed = Result { try checkpointer.close() }
        // After a clean stop the database file alone holds the directory (handy for a copy);
        // if this fails, the log still holds the rest and the next open replays it.
        _ = try? pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
        try pool.close()
        try checkpointerClosed.get()
    }

    // MARK: Changes

    public func apply(_ changes: [DirectoryChange]) async -> [P2PProtocol.ResultCode] {
        guard !changes.isEmpty else { return [] }
        return await withCheckedContinuation { continuation in
            enqueue(changes) { continuation.resume(returning: $0) }
        }
    }

    /// Queues `changes` for the next group commit; `completion` gets their codes on the
    /// writer's thread once committed.
    public func apply(
        _ changes: [DirectoryChange], completion: @escaping @Sendable ([P2PProtocol.ResultCode]) -> Void
    ) {
        guard !changes.isEmpty else { return completion([]) }
        enqueue(changes, completion: completion)
    }

    private func enqueue(_ changes: [DirectoryChange], completion: @escaping @Sendable ([ResultCode]) -> Void) {
        let start = pending.withLock { pending -> Bool? in
            if pending.closed { return nil }
            pending.batches.append(PendingBatch(changes: changes, completion: completion))
            if pending.draining { return false }
            pending.draining = true
            return true
        }
        switch start {
        case nil: completion(changes.map(\.operation.otherErrorCode))
        case true?: writerQueue.async { self.drain() }
        case false?: break
        }
    }

    private func drain() {
        while true {
            let batches: [PendingBatch] = pending.withLock { pending in
                var taken = 0
                var count = 0
                while taken < pending.batches.count && count < Self.maxBatch {
                    count += pending.batches[taken].changes.count
                    taken += 1
                }
                if taken == 0 { pending.draining = false }
                defer { pending.batches.removeFirst(taken) }
                return Array(pending.batches.prefix(taken))
            }
            if batches.isEmpty { return }
            let changes = batches.flatMap(\.changes)
            var codes: [ResultCode]
            do {
                var refusals: [String] = []
                var committed: [SearchBitmaps.Change] = []
                codes = try pool.write { db in
                    refusals = []
                    committed = []
                    var presence: [String: Bool] = [:]
                    let codes = try changes.map { change in
                        try Self.decide(
                            change, in: db,
                            refused: { refusals.append(change.ownerCheckRefusal(connectedFrom: $0)) },
                            keyRefused: { refusals.append(change.keyRefusal) },
                            published: { id in
                                if case .publish(_, let name, let description, _) = change.unkeyed.change {
                                    committed.append(.published(id: id, name: name, description: description))
                                }
                            },
                            deleted: { committed.append(.deleted(ids: $0)) },
                            presenceChanged: { user, online in presence[user] = online })
                    }
                    // So far `committed` holds only the files published and deleted.
                    if !committed.isEmpty { try Self.updateSearchIndex(db) }
                    // The files of the users whose presence changed, as the batch left them.
                    for (user, online) in presence {
                        let ids = try Int64.fetchAll(
                            db.cachedStatement(sql: "SELECT id FROM file WHERE owner = ?"), arguments: [user])
                        committed.append(.presence(ids: ids, online: online))
                    }
                    return codes
                }
                // Committed; the search bitmaps learn it before anyone is answered.
                searchBitmaps.didCommit(committed)
                if codes.contains(.ok) {
                    var changed = DirectoryChanges()
                    for (change, code) in zip(changes, codes) where code == .ok { changed.add(change) }
                    journal.record(changed)
                    checkpointer.didCommit()
                    metrics.commits.increment()
                    metrics.changesPerCommit.record(changes.count)
                }
                for refusal in refusals { logger.warning("\(refusal)") }
                if let ended = writeFailures.withLock({ failures in defer { failures = nil }; return failures }) {
                    let seconds = (ContinuousClock.now - ended.since).components.seconds
                    logger.notice(
                        "directory writes succeed again, after \(ended.refused) changes were refused in \(seconds) s")
                }
            } catch {
                // The transaction was rolled back: nothing of these batches is on disk. Reads
                // go on; the next batch tries again (space may be back by then).
                codes = changes.map(\.operation.otherErrorCode)
                let started = writeFailures.withLock { failures -> Bool in
                    if failures == nil {
                        failures = WriteFailures(since: .now, refused: changes.count)
                        return true
                    }
                    failures!.refused += changes.count
                    return false
                }
                if started {
                    let full = (error as? DatabaseError)?.resultCode == .SQLITE_FULL ? " (the disk is full)" : ""
                    logger.error(
                        "directory writes are failing\(full): \(error); changes are answered with their error code and reads go on until a write succeeds again"
                    )
                }
            }
            var offset = 0
            for batch in batches {
                let count = batch.changes.count
                batch.completion(Array(codes[offset..<offset + count]))
                offset += count
            }
            if checkpointer.takeRestartRequest() {
                // Short: the checkpointer has copied nearly all of the log already. Failing
                // only leaves the log longer.
                _ = try? pool.writeWithoutTransaction { db in try db.checkpoint(.passive) }
            }
        }
    }

    /// Decides `change` by PROTOCOL.md section 2 and makes it, inside the writer's transaction.
    /// Each code comes from what a statement did (rows changed) or found, never from a copy
    /// of the data, so a database shared by several writers could decide it the same way.
    /// A change refused by the owner check is reported to `refused` with both addresses.
    /// A file published is reported to `published` with its id, files deleted to `deleted`,
    /// a user connected or gone offline to `presenceChanged`.
    static func decide(
        _ change: DirectoryChange, in db: Database, refused: (_ connectedFrom: String) -> Void = { _ in },
        keyRefused: () -> Void = {},
        published: (_ id: Int64) -> Void = { _ in }, deleted: (_ ids: [Int64]) -> Void = { _ in },
        presenceChanged: (_ user: String, _ online: Bool) -> Void = { _, _ in }
    ) throws -> ResultCode {
        // The key first (``DirectoryRules/keyGate(_:boundKey:)``): REGISTER and EXPIRE need no
        // look at the user's key, the rest one indexed read.
        let boundKey: String?
        switch change.unkeyed.change {
        case .register, .expire, .keyed: boundKey = nil
        case .unregister, .connect, .disconnect, .publish, .delete:
            boundKey = try String.fetchOne(
                db.cachedStatement(sql: "SELECT key FROM user WHERE name = ?"), arguments: [change.user])
        }
        switch DirectoryRules.keyGate(change, boundKey: boundKey) {
        case .refuse(let code):
            keyRefused()
            return code
        case .proceed(let change, let bind):
            let code = try decideUnkeyed(
                change, in: db, refused: refused, published: published, deleted: deleted,
                presenceChanged: presenceChanged)
            if code == .ok, let bind {
                try db.cachedStatement(sql: "UPDATE user SET key = ? WHERE name = ? AND key IS NULL")
                    .execute(arguments: [bind, change.user])
            }
            return code
        }
    }

    private static func decideUnkeyed(
        _ change: DirectoryChange, in db: Database, refused: (_ connectedFrom: String) -> Void,
        published: (_ id: Int64) -> Void, deleted: (_ ids: [Int64]) -> Void,
        presenceChanged: (_ user: String, _ online: Bool) -> Void
    ) throws -> ResultCode {
        /// The rules' code for `change` from its user's presence: the codes that need it are
        /// decided by ``DirectoryRules/gate(_:_:)``, as in every store.
        func gateCode() throws -> ResultCode? {
            switch DirectoryRules.gate(change, try presence(of: change.user, db)) {
            case .proceed: return nil
            case .refuse(let code): return code
            case .refuseByOwnerCheck(let code, let ip):
                refused(ip)
                return code
            }
        }
        /// After a conditional statement changed nothing: why (the statement's condition is the
        /// gate's), or the operation's "other" code should the gate see no reason.
        func whyUnchanged() throws -> ResultCode {
            try gateCode() ?? change.operation.otherErrorCode
        }

        switch change {
        case .keyed:
            preconditionFailure("keys are decided by decide")

        case .register(let user):
            guard DirectoryRules.isValidUserName(user) else { return change.operation.otherErrorCode }
            try db.cachedStatement(sql: "INSERT INTO user (name) VALUES (?) ON CONFLICT (name) DO NOTHING")
                .execute(arguments: [user])
            return db.changesCount == 1 ? .ok : 1

        case .unregister(let user, let from):
            // Its files go with it (ON DELETE CASCADE). With the owner check, a connected user
            // goes only when the request comes from the address it connected from.
            let files = try Int64.fetchAll(
                db.cachedStatement(sql: "SELECT id FROM file WHERE owner = ?"), arguments: [user])
            try db.cachedStatement(sql: "DELETE FROM user WHERE name = ?1 AND (?2 IS NULL OR ip IS NULL OR ip = ?2)")
                .execute(arguments: [user, from])
            guard db.changesCount == 1 else { return try whyUnchanged() }
            deleted(files)
            return .ok

        case .connect(let user, let ip, let port):
            guard DirectoryRules.isValidPort(port) else { return try whyUnchanged() }
            try db.cachedStatement(sql: "UPDATE user SET ip = ?, port = ? WHERE name = ? AND ip IS NULL")
                .execute(arguments: [ip, port, user])
            guard db.changesCount == 1 else { return try whyUnchanged() }
            presenceChanged(user, true)
            return .ok

        case .disconnect(let user, let from):
            try db.cachedStatement(
                sql: "UPDATE user SET ip = NULL, port = NULL WHERE name = ?1 AND ip IS NOT NULL AND (?2 IS NULL OR ip = ?2)"
            ).execute(arguments: [user, from])
            guard db.changesCount == 1 else { return try whyUnchanged() }
            presenceChanged(user, false)
            return .ok

        case .expire(let user, let ip, let port):
            try db.cachedStatement(sql: "UPDATE user SET ip = NULL, port = NULL WHERE name = ? AND ip = ? AND port = ?")
                .execute(arguments: [user, ip, port])
            guard db.changesCount == 1 else { return try whyUnchanged() }
            presenceChanged(user, false)
            return .ok

        case .publish(let user, let fileName, let description, _):
            if let code = try gateCode() { return code }
            try db.cachedStatement(
                sql: "INSERT INTO file (owner, name, description) VALUES (?, ?, ?) ON CONFLICT (owner, name) DO NOTHING"
            ).execute(arguments: [user, fileName, description])
            guard db.changesCount == 1 else { return 3 }
            published(db.lastInsertedRowID)
            return .ok

        case .delete(let user, let fileName, _):
            if let code = try gateCode() { return code }
            guard
                let id = try Int64.fetchOne(
                    db.cachedStatement(sql: "DELETE FROM file WHERE owner = ? AND name = ? RETURNING id"),
                    arguments: [user, fileName])
            else { return 3 }
            deleted([id])
            return .ok
        }
    }

    /// Moves what the search index's triggers noted (migration v5) into the index, inside the
    /// caller's transaction: the indexed files that were deleted first (a new file can get a
    /// deleted one's id), then the new files. One statement for each, so that FTS5 writes one
    /// segment for all of them.
    static func updateSearchIndex(_ db: Database) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO file_search (file_search, rowid, name, description)
                SELECT 'delete', file, name, description FROM file_search_queue WHERE gone = 1
                """
        ).execute()
        try db.cachedStatement(
            sql: """
                INSERT INTO file_search (rowid, name, description)
                SELECT f.id, f.name, f.description FROM file_search_queue q JOIN file f ON f.id = q.file
                WHERE q.gone = 0
                """
        ).execute()
        try db.cachedStatement(sql: "DELETE FROM file_search_queue").execute()
    }

    /// Whether `user` is registered, and connected at which address.
    static func presence(of user: String, _ db: Database) throws -> Presence {
        guard
            let row = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT ip, port FROM user WHERE name = ?"), arguments: [user])
        else { return .unknown }
        let ip: String? = row[0]
        let port: String? = row[1]
        guard let ip else { return .offline }
        return .online(ip: ip, port: port ?? "")
    }


    // MARK: Reads

    public var directoryVersion: UInt64? { journal.version }

    public func changes(since version: UInt64) -> (through: UInt64, changes: DirectoryChanges?) {
        journal.changes(since: version)
    }

    public func read(_ queries: [DirectoryQuery]) async -> [Reply] {
        await withCheckedContinuation { continuation in
            read(queries) { continuation.resume(returning: $0) }
        }
    }

    /// Answers on the reader threads (LIST_CONTENT, LIST_USERS and SEARCH each on its own);
    /// `completion` runs on the last to finish.
    public func read(_ queries: [DirectoryQuery], completion: @escaping @Sendable ([Reply]) -> Void) {
        guard !queries.isEmpty else { return completion([]) }
        let parts = [(DirectoryOperation.listContent, contentReader), (.listUsers, usersReader), (.search, searchReader)]
            .map { operation, reader in (queries.indices.filter { queries[$0].operation == operation }, reader) }
            .filter { !$0.0.isEmpty }
        if parts.count == 1 {
            submit(PendingRead(queries: queries, completion: completion), to: parts[0].1)
            return
        }
        // Several kinds: each reader answers its part, and the last one to finish completes.
        let replies = Mutex((remaining: parts.count, replies: [Reply](repeating: .status(.ok), count: queries.count)))
        for (indices, reader) in parts {
            submit(
                PendingRead(queries: indices.map { queries[$0] }) { answers in
                    let done = replies.withLock { state -> [Reply]? in
                        for (index, reply) in zip(indices, answers) { state.replies[index] = reply }
                        state.remaining -= 1
                        return state.remaining == 0 ? state.replies : nil
                    }
                    if let done { completion(done) }
                }, to: reader)
        }
    }

    private func submit(_ read: PendingRead, to reader: BatchingWorker<PendingRead>) {
        if !reader.submit(read) {
            // Closed, or 100,000 reads waiting: refuse rather than wait.
            read.completion(read.queries.map { .status($0.operation.otherErrorCode) })
        }
    }

    /// Answers every read of `reads` in one read transaction; runs on a reader thread.
    private static func answer(
        _ reads: [PendingRead], from reader: any DatabaseReader, bitmaps: SearchBitmaps?, logger: Logger
    ) {
        let queries = reads.flatMap(\.queries)
        var replies: [Reply]
        do {
            replies = try reader.read { db in
                var memo = ReadMemo()
                return try queries.map { try Self.answer($0, in: db, bitmaps: bitmaps, memo: &memo) }
            }
        } catch {
            logger.error("directory read failed: \(error)")
            replies = queries.map { .status($0.operation.otherErrorCode) }
        }
        var offset = 0
        for read in reads {
            let count = read.queries.count
            read.completion(Array(replies[offset..<offset + count]))
            offset += count
        }
    }

    /// What one read transaction has already read, for the rest of its batch: every query of a
    /// batch reads the same snapshot, so the connected users are read once, and each owner's
    /// files once however many LIST_CONTENTs ask for them (a popular owner is listed by many
    /// clients at once). The replies share the arrays, which lets the batcher encode them once.
    struct ReadMemo {
        var connectedUsers: [ConnectedUser]?
        /// An owner's LIST_CONTENT reply for a connected requester: its files, or 3.
        var contents: [String: Reply] = [:]
    }

    private static func answer(
        _ query: DirectoryQuery, in db: Database, bitmaps: SearchBitmaps?, memo: inout ReadMemo
    ) throws -> Reply {
        switch query {
        case .listUsers(let requester):
            if let code = DirectoryRules.requesterCode(try presence(of: requester, db)) { return .status(code) }
            if memo.connectedUsers == nil { memo.connectedUsers = try connectedUsers(db) }
            return .users(memo.connectedUsers ?? [])

        case .listContent(let requester, let owner):
            if let known = memo.contents[owner] {
                if let code = DirectoryRules.requesterCode(try presence(of: requester, db)) { return .status(code) }
                return known
            }
            let (reply, ownersAnswer) = try listContent(requester: requester, owner: owner, db)
            if ownersAnswer { memo.contents[owner] = reply }
            return reply

        case .search(let requester, let query):
            if let code = DirectoryRules.requesterCode(try presence(of: requester, db)) { return .status(code) }
            guard !DirectoryRules.searchWords(query).isEmpty else { return .status(3) }
            return .hits(try search(query, in: db, bitmaps: bitmaps))
        }
    }

    /// SEARCH through the full-text index: the online owners' hits first, then the others',
    /// each in publishing order (the index answers in rowid order, which is publishing order,
    /// so nothing is sorted).
    ///
    /// With the bitmaps (see `SearchBitmaps`): the index is asked only for the words without
    /// one, each id it gives is tested in the other words' bitmaps and in the online one; when
    /// every word has a bitmap, the index is not read at all. Until the bitmaps are built
    /// (during the first searches), the index and SQL alone.
    static func search(_ query: String, in db: Database, bitmaps: SearchBitmaps?) throws -> [SearchHit] {
        var words: [String] = []
        for word in DirectoryRules.searchWords(query) where !words.contains(word) { words.append(word) }
        let found = bitmaps?.bitmaps(for: words) ?? SearchBitmaps.Found()
        func match(_ words: [String]) throws -> String {
            try words.map { try matchExpression(forPrefix: $0, in: db) }.joined(separator: " AND ")
        }
        let tested = words.compactMap { found.prefixes[$0] }
        let asked = words.filter { found.prefixes[$0] == nil }
        // A word whose bitmap is being built is frequent: reading its list from the index and
        // testing the others' bitmaps would cost more than the index's own AND.
        guard let online = found.online, !asked.contains(where: found.building.contains) else {
            return try search(match: match(words), in: db)
        }
        if asked.isEmpty {
            // The intersection of the bitmaps. (A file deleted after this read began may be
            // missing from the answer.)
            return try search(online: online, in: db) { take in FileBitmap.forEachInAll(tested, take) }
        }
        let expression = try match(asked)
        return try search(online: online, in: db) { take in
            let ids = try Int64.fetchCursor(
                db.cachedStatement(sql: "SELECT rowid FROM file_search WHERE file_search MATCH ?1 ORDER BY rowid"),
                arguments: [expression])
            while let id = try ids.next() {
                if tested.allSatisfy({ $0.contains(id) }), !take(id) { return }
            }
        }
    }

    /// One pass over the matches keeps the first 100 online hits and the first 100 others and
    /// stops at the 100th online one; once it has 100 others, the rest of the matches is read
    /// by a query that skips the offline owners' files in SQL. (Two passes, online then
    /// offline, walked the matches twice when few owners are online.) CROSS JOIN keeps the
    /// index as the outer loop: otherwise SQLite may start from the 100,000 connected users
    /// and probe the index for each of their files. The online test reads the small index
    /// of the connected users, not the users table.
    private static func search(match: String, in db: Database) throws -> [SearchHit] {
        let limit = DirectoryRules.maxSearchHits
        var online: [SearchHit] = []
        var offline: [SearchHit] = []
        var lastRowid: Int64 = 0
        let matches = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    SELECT f.owner, f.name, f.description, f.id,
                        EXISTS (SELECT 1 FROM user INDEXED BY user_connected WHERE name = f.owner AND ip IS NOT NULL)
                    FROM file_search CROSS JOIN file f ON f.id = file_search.rowid
                    WHERE file_search MATCH ?1 ORDER BY file_search.rowid
                    """), arguments: [match])
        while online.count < limit, offline.count < limit, let row = try matches.next() {
            if row[4] as Bool { online.append(hit(row)) } else { offline.append(hit(row)) }
            lastRowid = row[3]
        }
        if online.count < limit, offline.count == limit {
            let onlineMatches = try Row.fetchCursor(
                db.cachedStatement(
                    sql: """
                        SELECT f.owner, f.name, f.description FROM file_search
                        CROSS JOIN file f ON f.id = file_search.rowid
                        WHERE file_search MATCH ?1 AND file_search.rowid > ?2
                            AND EXISTS (SELECT 1 FROM user INDEXED BY user_connected
                                        WHERE name = f.owner AND ip IS NOT NULL)
                        ORDER BY file_search.rowid LIMIT ?3
                        """), arguments: [match, lastRowid, limit - online.count])
            while let row = try onlineMatches.next() { online.append(hit(row)) }
        }
        return online + offline.prefix(limit - online.count)
    }

    /// The same with the bitmaps: `candidates` gives the ids of the files that match, in
    /// increasing order, to its argument until that returns false; they are sorted into online
    /// and offline in memory, and only the files answered with are looked up.
    private static func search(
        online: FileBitmap, in db: Database, candidates: (_ take: (Int64) -> Bool) throws -> Void
    ) throws -> [SearchHit] {
        let limit = DirectoryRules.maxSearchHits
        var onlineIds: [Int64] = []
        var offlineIds: [Int64] = []
        try candidates { id in
            if online.contains(id) {
                onlineIds.append(id)
            } else if offlineIds.count < limit {
                offlineIds.append(id)
            }
            return onlineIds.count < limit
        }
        return try files(onlineIds + offlineIds.prefix(limit - onlineIds.count), in: db)
    }

    /// The files with these ids, in this order.
    private static func files(_ ids: [Int64], in db: Database) throws -> [SearchHit] {
        guard !ids.isEmpty else { return [] }
        return try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT f.owner, f.name, f.description
                    FROM json_each(?1) AS answered CROSS JOIN file f ON f.id = answered.value
                    """), arguments: ["[" + ids.map(String.init).joined(separator: ",") + "]"]
        ).map(hit)
    }

    private static func hit(_ row: Row) -> SearchHit {
        SearchHit(owner: row[0], name: row[1], description: row[2])
    }

    /// `word` as an FTS5 string: never read as FTS5 syntax.
    static func quotedForMatch(_ word: String) -> String {
        "\"" + word.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// The most words a long prefix is expanded into (see `matchExpression`).
    static let maxPrefixExpansion = 256
    /// The longest prefix the search index keeps a list for (migration v4).
    static let longestPrefixList = 6

    /// The FTS5 expression for "a word starting with `prefix`". Every word is quoted: the text
    /// is never read as FTS5 syntax.
    ///
    /// Prefixes of up to 6 characters are read from the index's prefix lists
    /// (`prefix = '2 3 4 5 6'`). A longer one would make FTS5 gather and merge, before the
    /// first hit, the lists of every word it covers. Such a prefix usually stands for a few
    /// words, read from the index's word list; their lists are then merged lazily
    /// (`"lecture" OR "lectures" ...`) and the query stops at its 100 hits. A prefix of more
    /// words than `maxPrefixExpansion`, or of none the word list knows, stays a prefix query.
    static func matchExpression(forPrefix prefix: String, in db: Database) throws -> String {
        let quoted = quotedForMatch
        guard prefix.unicodeScalars.count > longestPrefixList else { return quoted(prefix) + "*" }
        // Words sort by their UTF-8 bytes; U+10FFFF sorts after every continuation of `prefix`.
        let words = try String.fetchAll(
            db.cachedStatement(sql: "SELECT term FROM file_search_words WHERE term >= ?1 AND term < ?2 LIMIT ?3"),
            arguments: [prefix, prefix + "\u{10FFFF}", maxPrefixExpansion + 1])
        guard !words.isEmpty, words.count <= maxPrefixExpansion, words.allSatisfy({ $0.hasPrefix(prefix) }) else {
            return quoted(prefix) + "*"
        }
        return "(" + words.map(quoted).joined(separator: " OR ") + ")"
    }

    public func registeredUsers() async throws -> [String] {
        try await readOffThePool { db in try String.fetchAll(db, sql: "SELECT name FROM user ORDER BY name") }
    }

    public func connectedUsers() async throws -> [ConnectedUser] {
        try await readOffThePool { db in try Self.connectedUsers(db) }
    }

    public func presence(of user: String) async throws -> Presence {
        try await readOffThePool { db in try Self.presence(of: user, db) }
    }

    public func boundKey(of user: String) async throws -> String? {
        try await readOffThePool { db in
            try String.fetchOne(db.cachedStatement(sql: "SELECT key FROM user WHERE name = ?"), arguments: [user])
        }
    }

    public func unbind(_ user: String) async throws -> Bool {
        let pool = self.pool
        return try await withCheckedThrowingContinuation { continuation in
            // On the writer's queue, behind the changes already submitted.
            writerQueue.async {
                continuation.resume(
                    with: Result {
                        try pool.write { db in
                            try db.execute(sql: "UPDATE user SET key = NULL WHERE name = ?", arguments: [user])
                            return db.changesCount == 1
                        }
                    })
            }
        }
    }

    public func sessionSecret() async throws -> String {
        let pool = self.pool
        let made = Data((0..<32).map { _ in UInt8.random(in: .min ... .max) }).base64EncodedString()
        return try await withCheckedThrowingContinuation { continuation in
            writerQueue.async {
                continuation.resume(
                    with: Result {
                        try pool.write { db in
                            try db.execute(
                                sql: "INSERT INTO secret (name, value) VALUES ('sessions', ?) ON CONFLICT (name) DO NOTHING",
                                arguments: [made])
                            return try String.fetchOne(db, sql: "SELECT value FROM secret WHERE name = 'sessions'")!
                        }
                    })
            }
        }
    }

    public func overview() async throws -> DirectoryOverview {
        try await readOffThePool { db in
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT (SELECT count(*) FROM user), (SELECT count(*) FROM user WHERE ip IS NOT NULL),
                        (SELECT count(*) FROM file)
                    """)!
            return DirectoryOverview(users: row[0], connectedUsers: row[1], files: row[2])
        }
    }

    public func files(of owner: String) async throws -> [PublishedFile]? {
        try await readOffThePool { db in
            guard try Self.presence(of: owner, db) != .unknown else { return nil }
            return try Self.files(of: owner, db)
        }
    }

    public func search(_ query: String) async throws -> [SearchHit] {
        try await readOffThePool { db in
            DirectoryRules.searchWords(query).isEmpty ? [] : try Self.search(query, in: db, bitmaps: self.searchBitmaps)
        }
    }

    /// Every user and file, read in one transaction (for `p2p-server copy-directory`).
    public func users(after name: String?, limit: Int) async throws -> [DirectoryContents.User] {
        try await readOffThePool { db in
            let rows = try Row.fetchCursor(
                db, sql: "SELECT name, ip, port, key FROM user WHERE ?1 IS NULL OR name > ?1 ORDER BY name LIMIT ?2",
                arguments: [name, limit])
            var users: [DirectoryContents.User] = []
            while let row = try rows.next() {
                users.append(DirectoryContents.User(name: row[0], ip: row[1], port: row[2], key: row[3]))
            }
            return users
        }
    }

    public func files(after id: Int64, limit: Int) async throws -> (files: [DirectoryContents.File], lastID: Int64) {
        try await readOffThePool { db in
            let rows = try Row.fetchCursor(
                db, sql: "SELECT id, owner, name, description FROM file WHERE id > ? ORDER BY id LIMIT ?",
                arguments: [id, limit])
            var files: [DirectoryContents.File] = []
            var last = id
            while let row = try rows.next() {
                last = row[0]
                files.append(DirectoryContents.File(owner: row[1], name: row[2], description: row[3]))
            }
            return (files, last)
        }
    }

    /// LIST_CONTENT in one statement (it is the most frequent read): the requester's row, the
    /// owner's and the owner's files, which are read only for a connected requester.
    /// `ownersAnswer`: the requester may read, so the reply is the owner's (its files or 3)
    /// for any requester that may.
    private static func listContent(
        requester: String, owner: String, _ db: Database
    ) throws -> (reply: Reply, ownersAnswer: Bool) {
        let rows = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    SELECT r.name IS NOT NULL, r.ip IS NOT NULL, o.name IS NOT NULL, f.name, f.description
                    FROM (SELECT ?1 AS requester, ?2 AS owner) AS q
                    LEFT JOIN user r ON r.name = q.requester
                    LEFT JOIN user o ON o.name = q.owner
                    LEFT JOIN file f ON f.owner = o.name AND r.ip IS NOT NULL
                    ORDER BY f.id
                    """), arguments: [requester, owner])
        var files: [PublishedFile] = []
        var first = true
        while let row = try rows.next() {
            if first {
                first = false
                if let code = DirectoryRules.requesterCode(registered: row[0], connected: row[1]) {
                    return (.status(code), false)
                }
                guard row[2] as Bool else { return (.status(3), true) }
            }
            if let name: String = row[3] { files.append(PublishedFile(name: name, description: row[4])) }
        }
        return (.content(files), true)
    }

    private static func files(of owner: String, _ db: Database) throws -> [PublishedFile] {
        var files: [PublishedFile] = []
        let rows = try Row.fetchCursor(
            db.cachedStatement(sql: "SELECT name, description FROM file WHERE owner = ? ORDER BY id"),
            arguments: [owner])
        while let row = try rows.next() {
            files.append(PublishedFile(name: row[0], description: row[1]))
        }
        return files
    }

    /// One read on a Dispatch thread (it blocks), awaited.
    private func readOffThePool<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, any Error>, Never>) in
            DispatchQueue.global().async {
                continuation.resume(returning: Result { try self.pool.read(body) })
            }
        }
        return try result.get()
    }

    private static func connectedUsers(_ db: Database) throws -> [ConnectedUser] {
        var users: [ConnectedUser] = []
        let rows = try Row.fetchCursor(
            db.cachedStatement(sql: "SELECT name, ip, port FROM user WHERE ip IS NOT NULL ORDER BY name"))
        while let row = try rows.next() {
            users.append(ConnectedUser(name: row[0], ip: row[1], port: row[2]))
        }
        return users
    }

    /// The writer connection's `PRAGMA synchronous` (2 is FULL: every commit synced).
    func writerSynchronousMode() throws -> Int {
        try pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }
}

private struct PendingBatch: Sendable {
    var changes: [DirectoryChange]
    var completion: @Sendable ([ResultCode]) -> Void
}

private struct PendingRead: Sendable {
    var queries: [DirectoryQuery]
    var completion: @Sendable ([Reply]) -> Void
}

private struct PendingWrites: ~Copyable {
    var batches: [PendingBatch] = []
    var draining = false
    var closed = false
}
