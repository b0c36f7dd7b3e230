import Foundation
import GRDB
import P2PProtocol
import Synchronization

/// The persistent directory: registered users, where the connected ones listen, and the files
/// each user published. Kept in SQLite (WAL mode) through GRDB.
///
/// Every change is committed (and synced to disk) before its caller gets the result, so a
/// change that was answered 0 survives a crash of the process at any moment. Changes that
/// arrive together are committed together (group commit): each runs in its own savepoint
/// inside one transaction, so one fsync covers the whole batch while each change still sees
/// the ones before it. Reads go to GRDB's reader connections and run concurrently.
public final class DirectoryStore: Sendable {
    /// The file the directory lives in, inside the data folder.
    public static let fileName = "directory.sqlite"

    /// The most changes committed in one transaction.
    static let maxBatch = 512

    private let pool: DatabasePool
    private let pending = Mutex(PendingWrites())
    /// Runs the batches; blocking SQLite calls never touch the NIO event loops or the Swift
    /// concurrency pool.
    private let writerQueue = DispatchQueue(label: "p2p.directory.writer", qos: .userInitiated)

    /// Opens (creating if needed) the directory in `dataDirectory`.
    public init(dataDirectory: String) throws {
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        var configuration = Configuration()
        configuration.foreignKeysEnabled = true
        configuration.prepareDatabase { db in
            // FULL: the WAL is synced at every commit, so a committed change also survives
            // power loss, not just a crash of the process.
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        let path = (dataDirectory as NSString).appendingPathComponent(Self.fileName)
        pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(pool)
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

    /// Closes the database. Changes already answered are on disk; later calls fail.
    public func close() throws {
        try pool.close()
    }

    // MARK: Changes

    /// Applies `change` in the next group commit and returns its result code once committed.
    /// A failure of the database gives the operation's "other" code and changes nothing.
    func write(_ change: DirectoryChange) async -> ResultCode {
        await withCheckedContinuation { continuation in
            let startDrain = pending.withLock { pending in
                pending.writes.append((change, continuation))
                if pending.draining { return false }
                pending.draining = true
                return true
            }
            if startDrain {
                writerQueue.async { self.drain() }
            }
        }
    }

    private func drain() {
        while true {
            let batch: [(DirectoryChange, CheckedContinuation<ResultCode, Never>)] = pending.withLock { pending in
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
            var results: [ResultCode] = []
            do {
                try pool.writeWithoutTransaction { db in
                    results = []
                    try db.inTransaction(.immediate) {
                        for (change, _) in batch {
                            results.append(Self.applyInSavepoint(change, db))
                        }
                        return .commit
                    }
                }
            } catch {
                // The commit itself failed: nothing of this batch is on disk.
                results = batch.map { $0.0.operation.otherErrorCode }
            }
            for ((_, continuation), result) in zip(batch, results) {
                continuation.resume(returning: result)
            }
        }
    }

    private static func applyInSavepoint(_ change: DirectoryChange, _ db: Database) -> ResultCode {
        var result = change.operation.otherErrorCode
        do {
            try db.inSavepoint {
                result = try change.apply(db)
                return result == .ok ? .commit : .rollback
            }
        } catch {
            result = change.operation.otherErrorCode
        }
        return result
    }

    // MARK: Reads

    /// LIST_USERS for `requester`: 1 no such user, 2 not connected, else the connected users.
    func listUsers(requester: String) async -> Reply {
        do {
            return try await pool.read { db in
                guard let state = try Self.connectionState(of: requester, db) else { return .status(1) }
                guard state else { return .status(2) }
                let rows = try Row.fetchAll(
                    db, sql: "SELECT name, ip, port FROM user WHERE ip IS NOT NULL ORDER BY name")
                return .users(rows.map { ConnectedUser(name: $0["name"], ip: $0["ip"], port: $0["port"]) })
            }
        } catch {
            return .status(DirectoryOperation.listUsers.otherErrorCode)
        }
    }

    /// LIST_CONTENT: 1 requester unknown, 2 requester not connected, 3 owner unknown, else the
    /// owner's files in the order they were published.
    func listContent(requester: String, owner: String) async -> Reply {
        do {
            return try await pool.read { db in
                guard let state = try Self.connectionState(of: requester, db) else { return .status(1) }
                guard state else { return .status(2) }
                guard try Self.connectionState(of: owner, db) != nil else { return .status(3) }
                let rows = try Row.fetchAll(
                    db, sql: "SELECT name, description FROM file WHERE owner = ? ORDER BY id", arguments: [owner])
                return .content(rows.map { PublishedFile(name: $0["name"], description: $0["description"]) })
            }
        } catch {
            return .status(DirectoryOperation.listContent.otherErrorCode)
        }
    }

    /// Every registered user's name, sorted.
    public func registeredUsers() async throws -> [String] {
        try await pool.read { db in try String.fetchAll(db, sql: "SELECT name FROM user ORDER BY name") }
    }

    /// nil when the user is not registered, otherwise whether it is connected.
    static func connectionState(of user: String, _ db: Database) throws -> Bool? {
        guard let row = try Row.fetchOne(db, sql: "SELECT ip FROM user WHERE name = ?", arguments: [user]) else {
            return nil
        }
        return !row.hasNull(atIndex: 0)
    }
}

private struct PendingWrites: ~Copyable {
    var writes: [(DirectoryChange, CheckedContinuation<ResultCode, Never>)] = []
    var draining = false
}
