import Foundation
import Logging
import P2PDirectory
import P2PProtocol
import PostgresNIO
import Synchronization

// Reads for the server itself (the web page, the peer checks, copy, keys), whoever asks.
extension PostgresDirectoryStore {
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
                    """
                    INSERT INTO directory_secret (name, value) VALUES ('sessions', \(made)) ON CONFLICT (name) DO \
                    NOTHING
                    """,
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
                SELECT (SELECT count(*) FROM directory_user),
                    (SELECT count(*) FROM directory_user WHERE ip IS NOT NULL),
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
            guard DirectoryRules.emptySearchCode(query) == nil,
                case .hits(let hits) = try await self.search(query, requester: nil, connection)
            else { return [] }
            return hits
        }
    }

    func serverRead<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await serverWork(doing: "a read failed") {
            try await self.client.withConnection { connection in try await body(connection) }
        }
    }

    /// The server's own `work` (not a client's request), within the store's deadline; a
    /// failure is recorded as an outage and thrown as ``PostgresStoreError/unavailable(_:)``.
    func serverWork<T: Sendable>(
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
}
