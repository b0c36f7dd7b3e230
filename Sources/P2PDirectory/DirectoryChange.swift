import GRDB
import P2PProtocol

/// A request that changes the directory, with the rules that decide its result code
/// (PROTOCOL.md section 2). Applied by ``DirectoryStore`` inside a transaction.
enum DirectoryChange: Sendable {
    case register(user: String)
    case unregister(user: String)
    case connect(user: String, ip: String, port: String)
    case disconnect(user: String)
    case publish(user: String, fileName: String, description: String)
    case delete(user: String, fileName: String)

    var operation: DirectoryOperation {
        switch self {
        case .register: return .register
        case .unregister: return .unregister
        case .connect: return .connect
        case .disconnect: return .disconnect
        case .publish: return .publish
        case .delete: return .delete
        }
    }

    /// Runs the change; a non-zero result means nothing was changed.
    func apply(_ db: Database) throws -> ResultCode {
        switch self {
        case .register(let user):
            guard !user.isEmpty else { return 2 }
            guard try DirectoryStore.connectionState(of: user, db) == nil else { return 1 }
            try db.execute(sql: "INSERT INTO user (name) VALUES (?)", arguments: [user])
            return .ok

        case .unregister(let user):
            // Files go with the user (ON DELETE CASCADE).
            try db.execute(sql: "DELETE FROM user WHERE name = ?", arguments: [user])
            return db.changesCount == 1 ? .ok : 1

        case .connect(let user, let ip, let port):
            guard let connected = try DirectoryStore.connectionState(of: user, db) else { return 1 }
            guard Self.isValidPort(port) else { return 3 }
            guard !connected else { return 2 }
            try db.execute(sql: "UPDATE user SET ip = ?, port = ? WHERE name = ?", arguments: [ip, port, user])
            return .ok

        case .disconnect(let user):
            guard let connected = try DirectoryStore.connectionState(of: user, db) else { return 1 }
            guard connected else { return 2 }
            try db.execute(sql: "UPDATE user SET ip = NULL, port = NULL WHERE name = ?", arguments: [user])
            return .ok

        case .publish(let user, let fileName, let description):
            guard let connected = try DirectoryStore.connectionState(of: user, db) else { return 1 }
            guard connected else { return 2 }
            guard Self.isValidFileName(fileName) else { return 4 }
            let exists = try Bool.fetchOne(
                db, sql: "SELECT EXISTS (SELECT 1 FROM file WHERE owner = ? AND name = ?)", arguments: [user, fileName])
            guard exists != true else { return 3 }
            try db.execute(
                sql: "INSERT INTO file (owner, name, description) VALUES (?, ?, ?)",
                arguments: [user, fileName, description])
            return .ok

        case .delete(let user, let fileName):
            guard let connected = try DirectoryStore.connectionState(of: user, db) else { return 1 }
            guard connected else { return 2 }
            try db.execute(sql: "DELETE FROM file WHERE owner = ? AND name = ?", arguments: [user, fileName])
            return db.changesCount == 1 ? .ok : 3
        }
    }

    /// A listening port: decimal digits only, 1 to 65535.
    static func isValidPort(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 5, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
            let value = Int(text)
        else { return false }
        return (1...65535).contains(value)
    }

    /// File names are one word (the console splits on spaces) and not empty.
    static func isValidFileName(_ name: String) -> Bool {
        !name.isEmpty && !name.contains(where: { $0.isWhitespace })
    }
}
