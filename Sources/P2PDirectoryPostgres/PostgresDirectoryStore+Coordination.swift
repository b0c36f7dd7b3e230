import Foundation
import Logging
import P2PDirectory
import P2PProtocol
import PostgresNIO
import Synchronization

// What the servers sharing the database coordinate: control leases, passed control messages, shared peer checks.
extension PostgresDirectoryStore {
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

    /// The channel on which the servers sharing this database pass control messages on: each
    /// payload is JSON, `[user, field...]` for a user's control connection or
    /// `{"server": id, "fields": [...]}` for one server.
    static let controlChannel = "p2p_control"

    struct ServerPayload: Codable {
        var server: String
        var fields: [String]
    }

    public func forwardControl(_ fields: [String], to user: String) async throws {
        try await notify(try JSONEncoder().encode([user] + fields))
    }

    public func forwardControl(_ fields: [String], toServer server: String) async throws {
        try await notify(try JSONEncoder().encode(ServerPayload(server: server, fields: fields)))
    }

    private func notify(_ json: Data) async throws {
        let payload = String(decoding: json, as: UTF8.self)
        try await serverRead { connection in
            _ = try await connection.query("SELECT pg_notify(\(Self.controlChannel), \(payload))", logger: self.logger)
        }
    }

    public func receiveForwardedControl(
        _ deliver: @escaping @Sendable (ControlAddressee, [String]) -> Void
    ) async throws {
        guard !isClosed else { throw PostgresStoreError.closed }
        do {
            try await client.withConnection { connection in
                try await connection.listen(on: Self.controlChannel) { notifications in
                    for try await notification in notifications {
                        let json = Data(notification.payload.utf8)
                        if let fields = try? JSONDecoder().decode([String].self, from: json), let user = fields.first {
                            deliver(.user(user), Array(fields.dropFirst()))
                        } else if let message = try? JSONDecoder().decode(ServerPayload.self, from: json) {
                            deliver(.server(message.server), message.fields)
                        }
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

    func claimUsersToCheck(checker: String, lease: TimeInterval) async throws -> [ConnectedUser] {
        try await transaction { connection in
            try await connection.query(
                """
                INSERT INTO directory_checker (id, alive_until)
                VALUES (\(checker), now() + make_interval(secs => \(lease)))
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
                        / greatest(1, (SELECT count(*) FROM directory_checker WHERE alive_until > now()))
                    )::bigint AS n),
                kept AS (
                    SELECT name FROM directory_user
                    WHERE check_by = \(checker) AND \(unescaped: Self.checkable)
                    ORDER BY name LIMIT (SELECT n + n / 10 FROM share)
                    FOR UPDATE SKIP LOCKED),
                taken AS (
                    SELECT name FROM directory_user
                    WHERE \(unescaped: Self.checkable) AND check_by IS DISTINCT FROM \(checker)
                        AND (check_until IS NULL OR check_until < now())
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
}
