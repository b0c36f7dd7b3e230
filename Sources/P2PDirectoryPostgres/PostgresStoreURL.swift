import Foundation
import P2PDirectory

/// Where a shared PostgreSQL directory lives: `postgres://USER:PASSWORD@HOST:PORT/DB` (or
/// `postgresql://`), as libpq spells it. The password may be empty or missing (trust or peer
/// authentication); user name and password are percent-decoded. One query item is read:
/// `sslmode=disable|prefer|require` (default `prefer`: TLS when the server offers it).
public struct PostgresStoreURL: Sendable, Hashable, CustomStringConvertible {
    public enum TLSMode: String, Sendable, Hashable {
        case disable, prefer, require
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var tlsMode: TLSMode

    public init(
        host: String, port: Int = 5432, user: String, password: String? = nil, database: String,
        tlsMode: TLSMode = .prefer
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.tlsMode = tlsMode
    }

    /// Parses a `postgres://` URL.
    public init(parsing text: String) throws(PostgresStoreURLError) {
        guard let components = URLComponents(string: text),
            let scheme = components.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql"
        else { throw PostgresStoreURLError(text: text, problem: "expected postgres://USER:PASSWORD@HOST:PORT/DB") }
        guard let host = components.host, !host.isEmpty else {
            throw PostgresStoreURLError(text: text, problem: "no host")
        }
        guard let user = components.percentEncodedUser?.removingPercentEncoding, !user.isEmpty else {
            throw PostgresStoreURLError(text: text, problem: "no user name")
        }
        if let port = components.port, !(1...65535).contains(port) {
            throw PostgresStoreURLError(text: text, problem: "port must be 1-65535")
        }
        let database = String(components.path.drop(while: { $0 == "/" }))
        guard !database.isEmpty, !database.contains("/") else {
            throw PostgresStoreURLError(text: text, problem: "no database name")
        }
        var tlsMode = TLSMode.prefer
        for item in components.queryItems ?? [] {
            guard item.name == "sslmode" else {
                throw PostgresStoreURLError(text: text, problem: "unknown parameter '\(item.name)'")
            }
            guard let mode = item.value.flatMap(TLSMode.init(rawValue:)) else {
                throw PostgresStoreURLError(text: text, problem: "sslmode must be disable, prefer or require")
            }
            tlsMode = mode
        }
        self.init(
            // [::1] comes back with its brackets.
            host: host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host,
            port: components.port ?? 5432, user: user,
            password: components.percentEncodedPassword?.removingPercentEncoding, database: database,
            tlsMode: tlsMode)
    }

    /// The URL with its password, as `--store` takes it (for starting servers on it).
    public var connectionString: String {
        let allowed = CharacterSet.urlUserAllowed.subtracting(CharacterSet(charactersIn: ":@/"))
        func encoded(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text }
        let shownHost = host.contains(":") ? "[\(host)]" : host
        let secret = password.map { ":" + encoded($0) } ?? ""
        let query = tlsMode == .prefer ? "" : "?sslmode=\(tlsMode.rawValue)"
        return "postgres://\(encoded(user))\(secret)@\(shownHost):\(port)/\(database)\(query)"
    }

    /// The URL without its password (for logs and messages).
    public var description: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        let secret = password == nil ? "" : ":***"
        let query = tlsMode == .prefer ? "" : "?sslmode=\(tlsMode.rawValue)"
        return "postgres://\(user)\(secret)@\(shownHost):\(port)/\(database)\(query)"
    }
}

/// A `postgres://` URL that cannot be used, and why.
public struct PostgresStoreURLError: Error, Hashable, CustomStringConvertible {
    /// The URL as given (it may hold a password: never shown).
    public var text: String
    public var problem: String

    public init(text: String, problem: String) {
        self.text = text
        self.problem = problem
    }

    public var description: String { "not a PostgreSQL URL: \(problem)" }
}
