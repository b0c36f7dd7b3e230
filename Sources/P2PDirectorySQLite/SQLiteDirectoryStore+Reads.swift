import Foundation
import GRDB
import Logging
import P2PDirectory
import P2PNetworkSupport
import P2POperationLog
import P2PProtocol
import Synchronization

// Reads: LIST_USERS, LIST_CONTENT and SEARCH on the reader threads.
extension SQLiteDirectoryStore {
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
        let parts = [
            (DirectoryOperation.listContent, contentReader), (.listUsers, usersReader), (.search, searchReader),
        ]
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

    func submit(_ read: PendingRead, to reader: BatchingWorker<PendingRead>) {
        if !reader.submit(read) {
            // Closed, or 100,000 reads waiting: refuse rather than wait.
            read.completion(read.queries.map { .status($0.operation.otherErrorCode) })
        }
    }

    /// Answers every read of `reads` in one read transaction; runs on a reader thread.
    static func answer(
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

    static func answer(
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
            if let code = DirectoryRules.emptySearchCode(query) { return .status(code) }
            return .hits(try search(query, in: db, bitmaps: bitmaps))
        }
    }

    /// LIST_CONTENT in one statement (it is the most frequent read): the requester's row, the
    /// owner's and the owner's files, which are read only for a connected requester.
    /// `ownersAnswer`: the requester may read, so the reply is the owner's (its files or 3)
    /// for any requester that may.
    static func listContent(
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
                guard row[2] as Bool else { return (.status(DirectoryRules.unknownOwnerCode), true) }
            }
            if let name: String = row[3] { files.append(PublishedFile(name: name, description: row[4])) }
        }
        return (.content(files), true)
    }

    static func files(of owner: String, _ db: Database) throws -> [PublishedFile] {
        var files: [PublishedFile] = []
        let rows = try Row.fetchCursor(
            db.cachedStatement(sql: "SELECT name, description FROM file WHERE owner = ? ORDER BY id"),
            arguments: [owner])
        while let row = try rows.next() {
            files.append(PublishedFile(name: row[0], description: row[1]))
        }
        return files
    }

    /// One read off the cooperative pool (it blocks: ``BlockingWork``), awaited. The work holds
    /// the pool, not the store: a store dropped without a close lets go of its file lock at
    /// once, not when the pool's thread has finished with the work.
    func readOffThePool<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let pool = self.pool
        return try await BlockingWork.run { try pool.read(body) }
    }

    static func connectedUsers(_ db: Database) throws -> [ConnectedUser] {
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
