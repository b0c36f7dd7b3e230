import Foundation
import GRDB
import Logging
import P2PDirectory
import P2POperationLog
import P2PProtocol
import Synchronization

// Reads for the server itself (the web page, the peer checks, copy, keys), whoever asks.
extension SQLiteDirectoryStore {
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
                                sql:
                                    """
                                    INSERT INTO secret (name, value) VALUES ('sessions', ?) ON CONFLICT (name) DO \
                                    NOTHING
                                    """,
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
        let bitmaps = searchBitmaps
        return try await readOffThePool { db in
            DirectoryRules.emptySearchCode(query) != nil ? [] : try Self.search(query, in: db, bitmaps: bitmaps)
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
}
