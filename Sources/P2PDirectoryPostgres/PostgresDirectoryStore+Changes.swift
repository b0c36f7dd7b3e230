import Foundation
import Logging
import P2PDirectory
import P2PProtocol
import PostgresNIO
import Synchronization

// Changes: each batch one transaction, each change decided on its user's locked row.
extension PostgresDirectoryStore {
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
    func decide(
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
    func register(_ names: [String], on connection: PostgresConnection) async throws -> [ResultCode] {
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
            if let code = DirectoryRules.gate(.register(user: name), .unknown).code { return code }
            return inserted.remove(name) != nil ? .ok : 1
        }
    }

    /// Decides one change by PROTOCOL.md section 2 from its user's row, locked until the
    /// transaction ends (the codes that depend on it are ``DirectoryRules/gate(_:_:)``'s, as in
    /// every store), and makes it.
    func decide(
        _ original: DirectoryChange, on connection: PostgresConnection, keyRefused: () -> Void = {},
        refused: (_ connectedFrom: String) -> Void
    ) async throws -> ResultCode {
        if case .register(let user) = original.unkeyed.change {
            if let code = DirectoryRules.gate(original, .unknown).code { return code }
            // A keyed REGISTER binds the name it creates (``DirectoryRules/keyGate(_:boundKey:)``).
            let key = original.unkeyed.key
            let inserted = try await Self.count(
                connection,
                """
                INSERT INTO directory_user (name, key) VALUES (\(user), \(key)) ON CONFLICT (name) DO NOTHING \
                RETURNING 1
                """,
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
    func setSearchOrder(of user: String, offline: Bool, _ connection: PostgresConnection) async throws {
        try await connection.query(
            """
            UPDATE directory_file_word w SET offline = \(offline) FROM directory_file f
            WHERE f.owner = \(user) AND w.file_id = f.id AND w.offline <> \(offline)
            """, logger: logger)
    }

    /// `user`'s address, locked until the transaction ends; nil when there is no such user.
    func lockedRow(
        of user: String, _ connection: PostgresConnection
    ) async throws -> (ip: String?, port: String?, key: String?)? {
        let rows = try await connection.query(
            "SELECT ip, port, key FROM directory_user WHERE name = \(user) FOR UPDATE", logger: logger)
        for try await (ip, port, key) in rows.decode((String?, String?, String?).self) { return (ip, port, key) }
        return nil
    }
}

extension DirectoryChange {
    /// A plain REGISTER (a keyed one binds its name: decided alone).
    fileprivate var isRegister: Bool {
        if case .register = self { true } else { false }
    }
}
