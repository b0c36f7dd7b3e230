import Foundation
import GRDB
import Logging
import P2PDirectory
import P2POperationLog
import P2PProtocol
import Synchronization

// Changes: the writer thread, group commits, each change decided in SQL.
extension SQLiteDirectoryStore {
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

    func enqueue(_ changes: [DirectoryChange], completion: @escaping @Sendable ([ResultCode]) -> Void) {
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

    func drain() {
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
                if let ended = writeFailures.withLock({ failures in
                    defer { failures = nil }
                    return failures
                }) {
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
                        """
                        directory writes are failing\(full): \(error); changes are answered with their error code \
                        and reads go on until a write succeeds again
                        """
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

    static func decideUnkeyed(
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
            if let code = DirectoryRules.gate(change, .unknown).code { return code }
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
                sql:
                    """
                    UPDATE user SET ip = NULL, port = NULL WHERE name = ?1 AND ip IS NOT NULL AND (?2 IS NULL OR \
                    ip = ?2)
                    """
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
}
