import GRDB
import P2PProtocol

/// A request that changes the directory. ``DirectoryState/apply(_:)`` decides whether it is
/// allowed; ``persist(_:)`` writes an allowed one to SQLite.
public enum DirectoryChange: Sendable, Hashable {
    case register(user: String)
    case unregister(user: String)
    case connect(user: String, ip: String, port: String)
    case disconnect(user: String)
    case publish(user: String, fileName: String, description: String)
    case delete(user: String, fileName: String)

    public var operation: DirectoryOperation {
        switch self {
        case .register: return .register
        case .unregister: return .unregister
        case .connect: return .connect
        case .disconnect: return .disconnect
        case .publish: return .publish
        case .delete: return .delete
        }
    }

    /// Writes the change, which the rules allowed, inside the current transaction.
    func persist(_ db: Database) throws {
        switch self {
        case .register(let user):
            try db.cachedStatement(sql: "INSERT INTO user (name) VALUES (?)").execute(arguments: [user])
        case .unregister(let user):
            // Files go with the user (ON DELETE CASCADE).
            try db.cachedStatement(sql: "DELETE FROM user WHERE name = ?").execute(arguments: [user])
        case .connect(let user, let ip, let port):
            try db.cachedStatement(sql: "UPDATE user SET ip = ?, port = ? WHERE name = ?")
                .execute(arguments: [ip, port, user])
        case .disconnect(let user):
            try db.cachedStatement(sql: "UPDATE user SET ip = NULL, port = NULL WHERE name = ?")
                .execute(arguments: [user])
        case .publish(let user, let fileName, let description):
            try db.cachedStatement(sql: "INSERT INTO file (owner, name, description) VALUES (?, ?, ?)")
                .execute(arguments: [user, fileName, description])
        case .delete(let user, let fileName):
            try db.cachedStatement(sql: "DELETE FROM file WHERE owner = ? AND name = ?")
                .execute(arguments: [user, fileName])
        }
    }
}
