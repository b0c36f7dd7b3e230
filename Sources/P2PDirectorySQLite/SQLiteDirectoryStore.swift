import Foundation
import GRDB
import Logging
import P2PDirectory
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
    let fileLock: StoreFileLock
    let pool: DatabasePool
    let checkpointer: WALCheckpointer
    let pending = Mutex(PendingWrites())
    /// ``directoryVersion`` and ``changes(since:)``: every commit that changed something is
    /// recorded before its changes are answered. Only this server's writer changes the file.
    let journal = DirectoryChangeJournal()
    /// Runs the transactions; blocking SQLite calls never touch the NIO event loops or the
    /// Swift concurrency pool.
    let writerQueue = DispatchQueue(label: "p2p.directory.writer", qos: .userInitiated)
    /// Reader threads, each taking every batch of queries waiting for it into one read
    /// transaction: one for LIST_CONTENT, one for LIST_USERS, which reads every connected user
    /// and so on a large directory takes a while (the short reads never wait behind it).
    let contentReader: BatchingWorker<PendingRead>
    let usersReader: BatchingWorker<PendingRead>
    /// SEARCH has a reader of its own too: a query whose words are very common reads long
    /// lists from the index.
    let searchReader: BatchingWorker<PendingRead>
    /// The search reader's own read-only connection, with a cache big enough for the index
    /// pages and rows a search walks (see `searchCacheKiB`).
    let searchConnection: DatabaseQueue
    /// Bitmaps of the frequent prefixes, which spare a search the long lists of the index.
    let searchBitmaps: SearchBitmaps
    let logger: Logger
    let metrics: DirectoryMetrics
    /// Since when commits have been failing (a full disk, say), and how many changes were
    /// refused since: logged when it starts and when it ends, not at every failed commit.
    let writeFailures = Mutex<WriteFailures?>(nil)

    struct WriteFailures {
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

    static var migrator: DatabaseMigrator {
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
        let result = await withCheckedContinuation {
            (continuation: CheckedContinuation<Result<Void, any Error>, Never>) in
            writerQueue.async {
                continuation.resume(returning: Result { try self.closeOnWriter() })
            }
        }
        try result.get()
    }

    func closeOnWriter() throws {
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
}

struct PendingBatch: Sendable {
    var changes: [DirectoryChange]
    var completion: @Sendable ([ResultCode]) -> Void
}

struct PendingRead: Sendable {
    var queries: [DirectoryQuery]
    var completion: @Sendable ([Reply]) -> Void
}

struct PendingWrites: ~Copyable {
    var batches: [PendingBatch] = []
    var draining = false
    var closed = false
}
