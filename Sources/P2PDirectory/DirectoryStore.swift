import Foundation
import GRDB
import NIOCore
import P2PProtocol
import Synchronization

/// The persistent directory: registered users, where the connected ones listen, and the files
/// each user published. SQLite (WAL mode, through GRDB) holds it on disk; a
/// ``DirectoryState`` mirrors it in memory.
///
/// Changes go through one writer: it decides each change's result code on its own copy of the
/// state, writes the allowed ones to SQLite, and answers only after the commit, which is
/// synced to disk, so a change answered 0 survives a crash at any moment. Changes that arrive
/// together are committed together (group commit), so one fsync covers many requests.
/// Readers are answered from a second copy of the state, updated after each commit: they
/// never see a change that is not on disk, and never touch SQLite. Copying the write-ahead log
/// into the database file is left to a ``WALCheckpointer``, off the commit path.
public final class DirectoryStore: Sendable {
    /// The file the directory lives in, inside the data folder.
    public static let fileName = "directory.sqlite"

    /// The most changes committed in one transaction.
    static let maxBatch = 1024

    private let pool: DatabasePool
    private let checkpointer: WALCheckpointer
    private let pending = Mutex(PendingWrites())
    /// The committed directory, for readers.
    private let committed: Mutex<DirectoryState>
    /// The writer's copy; only touched on `writerQueue`.
    private nonisolated(unsafe) var writerState: DirectoryState
    /// Runs the batches; blocking SQLite calls never touch the NIO event loops or the Swift
    /// concurrency pool.
    private let writerQueue = DispatchQueue(label: "p2p.directory.writer", qos: .userInitiated)

    /// Opens (creating if needed) the directory in `dataDirectory` and loads it.
    public convenience init(dataDirectory: String) throws {
        try self.init(dataDirectory: dataDirectory, checkpointing: WALCheckpointer.Settings())
    }

    init(dataDirectory: String, checkpointing: WALCheckpointer.Settings) throws {
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        var configuration = Configuration()
        configuration.foreignKeysEnabled = true
        configuration.prepareDatabase { db in
            // Commits never copy the write-ahead log into the database file: the checkpointer does.
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 0")
        }
        let path = (dataDirectory as NSString).appendingPathComponent(Self.fileName)
        pool = try DatabasePool(path: path, configuration: configuration)
        // FULL: the write-ahead log is synced at every commit, so a committed change also
        // survives power loss, not just a crash of the process. Set here, on the writer,
        // because the pool sets NORMAL when it turns WAL on, after `prepareDatabase` has run.
        try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
        try Self.migrator.migrate(pool)
        checkpointer = try WALCheckpointer(path: path, settings: checkpointing)
        let state = try Self.load(pool)
        writerState = state
        committed = Mutex(state)
    }

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
        return migrator
    }

    private static func load(_ pool: DatabasePool) throws -> DirectoryState {
        try pool.read { db in
            var files: [String: [PublishedFile]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT owner, name, description FROM file ORDER BY id") {
                files[row["owner"], default: []].append(
                    PublishedFile(name: row["name"], description: row["description"]))
            }
            var state = DirectoryState()
            for row in try Row.fetchAll(db, sql: "SELECT name, ip, port FROM user") {
                let name: String = row["name"]
                let ip: String? = row["ip"]
                let port: String? = row["port"]
                let address = ip.flatMap { ip in port.map { DirectoryState.Address(ip: ip, port: $0) } }
                state.restore(user: name, address: address, files: files[name] ?? [])
            }
            return state
        }
    }

    /// Closes the database. Changes already answered are on disk; later calls fail.
    public func close() throws {
        let checkpointerClosed = Result { try checkpointer.close() }
        // After a clean stop the database file alone holds the directory (handy for a copy);
        // if this fails, the log still holds the rest and the next open replays it.
        _ = try? pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
        try pool.close()
        try checkpointerClosed.get()
    }

    // MARK: Changes

    /// Applies `change` in the next group commit and calls `completion` with its result code
    /// once committed: on `eventLoop` when one is given (the completions of one batch for one
    /// loop run in one task there, instead of waking the loop once per request), otherwise on
    /// the writer's queue. A failure of the database gives the operation's "other" code and
    /// changes nothing.
    public func write(
        _ change: DirectoryChange,
        on eventLoop: (any EventLoop)? = nil,
        completion: @escaping @Sendable (P2PProtocol.ResultCode) -> Void
    ) {
        let first = pending.withLock { pending in
            pending.writes.append(PendingWrite(change: change, eventLoop: eventLoop, completion: completion))
            return !pending.draining && pending.writes.count == 1
        }
        guard first else { return }
        if let eventLoop, eventLoop.inEventLoop {
            // Start the writer when this pass of the event loop is over (NIO runs tasks after
            // the I/O of a pass), so the requests read in the same pass share one commit.
            eventLoop.execute { self.startDrain() }
        } else {
            startDrain()
        }
    }

    private func startDrain() {
        let start = pending.withLock { pending in
            if pending.draining || pending.writes.isEmpty { return false }
            pending.draining = true
            return true
        }
        if start {
            writerQueue.async { self.drain() }
        }
    }

    private func drain() {
        while true {
            let batch: [PendingWrite] = pending.withLock { pending in
                if pending.writes.isEmpty {
                    pending.draining = false
                    return []
                }
                let count = min(pending.writes.count, Self.maxBatch)
                let batch = Array(pending.writes.prefix(count))
                pending.writes.removeFirst(count)
                return batch
            }
            if batch.isEmpty { return }
            var codes = batch.map { writerState.apply($0.change) }
            let allowed = zip(batch, codes).filter { $0.1 == .ok }.map { $0.0.change }
            if !allowed.isEmpty {
                do {
                    try pool.write { db in
                        for change in allowed { try change.persist(db) }
                    }
                    checkpointer.didCommit()
                    committed.withLock { state in
                        for change in allowed { _ = state.apply(change) }
                    }
                } catch {
                    // Nothing of this batch is on disk: answer "other" to all of it, and go back
                    // to what is.
                    codes = batch.map { $0.change.operation.otherErrorCode }
                    writerState = committed.withLock { $0 }
                }
            }
            Self.complete(batch, with: codes)
            if checkpointer.takeRestartRequest() {
                // Short: the checkpointer has copied nearly all of the log already. Failing
                // only leaves the log longer.
                _ = try? pool.writeWithoutTransaction { db in try db.checkpoint(.passive) }
            }
        }
    }

    /// Calls the completions, grouped into one task per event loop.
    private static func complete(_ batch: [PendingWrite], with codes: [P2PProtocol.ResultCode]) {
        var byLoop: [ObjectIdentifier: (any EventLoop, [(Completion, P2PProtocol.ResultCode)])] = [:]
        for (write, code) in zip(batch, codes) {
            guard let loop = write.eventLoop else {
                write.completion(code)
                continue
            }
            byLoop[ObjectIdentifier(loop), default: (loop, [])].1.append((write.completion, code))
        }
        for (loop, completions) in byLoop.values {
            loop.execute {
                for (completion, code) in completions { completion(code) }
            }
        }
    }

    // MARK: Reads

    /// LIST_USERS for `requester`.
    public func listUsers(requester: String) -> Reply {
        committed.withLock { $0.listUsers(requester: requester) }
    }

    /// LIST_CONTENT of `owner` for `requester`.
    public func listContent(requester: String, owner: String) -> Reply {
        committed.withLock { $0.listContent(requester: requester, owner: owner) }
    }

    /// Every registered user's name, sorted, as committed.
    public func registeredUsers() -> [String] {
        committed.withLock { $0.userNames }
    }

    /// The writer connection's `PRAGMA synchronous` (2 is FULL: every commit synced).
    func writerSynchronousMode() throws -> Int {
        try pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    /// Every registered user's name, sorted, read from the database file itself.
    public func registeredUsersOnDisk() throws -> [String] {
        try pool.read { db in try String.fetchAll(db, sql: "SELECT name FROM user ORDER BY name") }
    }
}

private typealias Completion = @Sendable (P2PProtocol.ResultCode) -> Void

private struct PendingWrite: Sendable {
    var change: DirectoryChange
    var eventLoop: (any EventLoop)?
    var completion: Completion
}

private struct PendingWrites: ~Copyable {
    var writes: [PendingWrite] = []
    var draining = false
}
