/// A command typed at the `c> ` prompt (PROTOCOL.md section 5). Names are case-sensitive.
public enum ConsoleCommand: Equatable, Sendable {
    case register(user: String)
    case unregister(user: String)
    case connect(user: String)
    case disconnect(user: String)
    case publish(fileName: String, description: String)
    case delete(fileName: String)
    case listUsers
    case listContent(user: String)
    case getFile(user: String, remoteName: String, localName: String)
    /// Extension: search every user's files (our servers only).
    case search(query: String)
    case quit

    /// What was wrong with a typed line; `description` is the usage line to print.
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty
        case unknown(String)
        case usage(String)

        public var description: String {
            switch self {
            case .empty: return ""
            case .unknown(let name):
                return "unknown command \(name.prefix(40)); commands: "
                    + ConsoleCommand.usages.map(\.1).joined(separator: " | ")
            case .usage(let usage): return "usage: \(usage)"
            }
        }
    }

    /// Each command's name and usage.
    static let usages: [(String, String)] = [
        ("REGISTER", "REGISTER <userName>"),
        ("UNREGISTER", "UNREGISTER <userName>"),
        ("CONNECT", "CONNECT <userName>"),
        ("DISCONNECT", "DISCONNECT <userName>"),
        ("PUBLISH", "PUBLISH <fileName> <description>"),
        ("DELETE", "DELETE <fileName>"),
        ("LIST_USERS", "LIST_USERS"),
        ("LIST_CONTENT", "LIST_CONTENT <userName>"),
        ("GET_FILE", "GET_FILE <userName> <remoteFileName> <localFileName>"),
        ("SEARCH", "SEARCH <words...>"),
        ("QUIT", "QUIT"),
    ]

    /// Parses one line: words separated by spaces or tabs; a PUBLISH description is the rest
    /// of the line and may contain spaces.
    public static func parse(_ line: String) throws(ParseError) -> ConsoleCommand {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let name = words.first else { throw .empty }
        let arguments = Array(words.dropFirst())
        func usage() -> ParseError { .usage(usages.first { $0.0 == name }!.1) }
        switch name {
        case "REGISTER", "UNREGISTER", "CONNECT", "DISCONNECT", "DELETE", "LIST_CONTENT":
            guard arguments.count == 1 else { throw usage() }
            let argument = arguments[0]
            switch name {
            case "REGISTER": return .register(user: argument)
            case "UNREGISTER": return .unregister(user: argument)
            case "CONNECT": return .connect(user: argument)
            case "DISCONNECT": return .disconnect(user: argument)
            case "DELETE": return .delete(fileName: argument)
            default: return .listContent(user: argument)
            }
        case "PUBLISH":
            guard arguments.count >= 2 else { throw usage() }
            // The description keeps its inner spacing: everything after the file name.
            let afterName = line.drop(while: { $0 == " " || $0 == "\t" }).dropFirst(name.count)
                .drop(while: { $0 == " " || $0 == "\t" }).dropFirst(arguments[0].count)
                .drop(while: { $0 == " " || $0 == "\t" })
            var description = String(afterName)
            while let last = description.last, last == " " || last == "\t" { description.removeLast() }
            return .publish(fileName: arguments[0], description: description)
        case "LIST_USERS", "QUIT":
            guard arguments.isEmpty else { throw usage() }
            return name == "QUIT" ? .quit : .listUsers
        case "SEARCH":
            guard !arguments.isEmpty else { throw usage() }
            return .search(query: arguments.joined(separator: " "))
        case "GET_FILE":
            guard arguments.count == 3 else { throw usage() }
            return .getFile(user: arguments[0], remoteName: arguments[1], localName: arguments[2])
        default:
            throw .unknown(name)
        }
    }
}
