import Dispatch
import Foundation
import Logging
import P2PDirectory
import P2PDirectoryPostgres
import P2PDirectorySQLite
import P2PNetworkSupport

/// Which store a directory server keeps its directory in: the value of `--store`.
///
/// - `sqlite:PATH`, or a plain `PATH`: the embedded SQLite store in the database file PATH
///   (created with its folder if missing). The default is `<data-dir>/directory.sqlite`.
/// - `postgres://USER:PASSWORD@HOST:PORT/DB` (or `postgresql://`): the shared PostgreSQL
///   store (``PostgresStoreURL``), which several servers can use at once.
/// - Any other `SCHEME://...` is refused with the list of supported stores.
///
/// A store of its own module is one case here, one in ``init(parsing:)`` and one in
/// ``open(logger:metrics:)``.
public enum DirectoryStoreLocation: DirectoryStoreOpener, Hashable {
    case sqlite(path: String)
    case postgres(PostgresStoreURL)

    /// The default: the SQLite file in `dataDirectory`.
    public static func sqlite(dataDirectory: String) -> DirectoryStoreLocation {
        .sqlite(path: (dataDirectory as NSString).appendingPathComponent(SQLiteDirectoryStore.fileName))
    }

    /// Parses a `--store` value.
    public init(parsing text: String) throws(DirectoryStoreLocationError) {
        if text.hasPrefix("sqlite:") {
            var path = String(text.dropFirst("sqlite:".count))
            // sqlite:///abs/path and sqlite://rel/path read as URLs do.
            if path.hasPrefix("//") { path.removeFirst(2) }
            guard !path.isEmpty else { throw .emptyPath(text) }
            self = .sqlite(path: path)
            return
        }
        if let range = text.range(of: "://") {
            let scheme = text[..<range.lowerBound].lowercased()
            if scheme == "postgres" || scheme == "postgresql" {
                do {
                    self = .postgres(try PostgresStoreURL(parsing: text))
                } catch {
                    throw .malformedURL(text, error.problem)
                }
                return
            }
            throw .unsupportedScheme(String(text[..<range.lowerBound]))
        }
        guard !text.isEmpty else { throw .emptyPath(text) }
        self = .sqlite(path: text)
    }

    public var description: String {
        switch self {
        case .sqlite(let path): return "sqlite:\(path)"
        case .postgres(let url): return url.description
        }
    }

    /// Opens the store, creating (or migrating) its schema if needed. Opening SQLite blocks on
    /// disk (it syncs its migrations), so it runs as ``BlockingWork``, not in the concurrency
    /// pool.
    public func open(logger: Logger, metrics: DirectoryMetrics = .none) async throws -> any DirectoryStore {
        switch self {
        case .sqlite(let path):
            return try await BlockingWork.run { try SQLiteDirectoryStore(path: path, logger: logger, metrics: metrics) }
        case .postgres(let url):
            return try await PostgresDirectoryStore.open(url, logger: logger, metrics: metrics)
        }
    }
}

/// A `--store` value that names no store this server can open.
public enum DirectoryStoreLocationError: Error, Hashable, CustomStringConvertible {
    case emptyPath(String)
    case unsupportedScheme(String)
    case malformedURL(String, String)

    public var description: String {
        switch self {
        case .emptyPath(let text):
            return "'\(text)' names no database file"
        case .unsupportedScheme(let scheme):
            return "'\(scheme)://' stores are not supported by this server "
                + "(supported: sqlite:PATH, a file path, postgres://USER:PASSWORD@HOST:PORT/DB)"
        case .malformedURL(_, let problem):
            // The text itself is not repeated: it may hold a password.
            return PostgresStoreURLError(text: "", problem: problem).description
        }
    }
}
