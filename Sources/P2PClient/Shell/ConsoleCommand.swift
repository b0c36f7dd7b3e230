/// A command typed at the `c> ` prompt (PROTOCOL.md section 5). Names are accepted in any
/// case (`register alice`); the result lines stay exactly as the spec writes them.
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
    /// Publishes every file of a folder and keeps the directory in line with it (this client
    /// only: it sends PUBLISH and DELETE).
    case share(folder: String)
    /// Stops sharing a folder: its files are deleted from the directory.
    case unshare(folder: String)
    /// What is shared: each folder, its files, what was skipped and why.
    case shared
    /// This client's key: its fingerprint and where it is kept (nothing is sent).
    case identity
    case quit
    /// `help`, `HELP`, `?`: the commands with their arguments (this client only; nothing is sent).
    case help

    /// What was wrong with a typed line; `description` is the usage line to print.
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty
        case unknown(String)
        case usage(String)

        public var description: String {
            switch self {
            case .empty: return ""
            case .unknown(let name):
                return "unknown command \(name.prefix(40)); type help for the commands"
            case .usage(let usage): return "usage: \(usage)"
            }
        }
    }

    /// Every command name, as typed at the prompt and completed with Tab.
    public static var names: [String] { usages.map(\.0) }

    /// What `help` prints: one command with its arguments per line.
    public static var helpLines: [String] {
        let width = usages.map(\.1.count).max() ?? 0
        return usages.map { name, usage in
            usage.padding(toLength: width + 2, withPad: " ", startingAt: 0) + (summaries[name] ?? "")
        } + ["Command names may be typed in any case. End of input (Ctrl+D) or Ctrl+C acts like QUIT."]
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
        ("SHARE", "SHARE <folder>"),
        ("UNSHARE", "UNSHARE <folder>"),
        ("SHARED", "SHARED"),
        ("IDENTITY", "IDENTITY"),
        ("QUIT", "QUIT"),
        ("HELP", "HELP"),
    ]

    static let summaries: [String: String] = [
        "REGISTER": "create a user in the directory",
        "UNREGISTER": "remove a user and everything it published",
        "CONNECT": "go online as this user and serve the files it published to peers",
        "DISCONNECT": "go offline",
        "PUBLISH": "list a file of the shared folder, with a description",
        "DELETE": "withdraw a published file",
        "LIST_USERS": "the users online, with their addresses",
        "LIST_CONTENT": "the files a user published",
        "GET_FILE": "download a file from a user's peer (alice,bob: from both at once)",
        "SEARCH": "find files of every user by words of their names or descriptions",
        "SHARE": "publish a folder's files and follow its changes",
        "UNSHARE": "stop sharing a folder; its files leave the directory",
        "SHARED": "the shared folders: files published, skipped and why",
        "IDENTITY": "this client's key: its fingerprint, its file",
        "QUIT": "disconnect and leave (also end of input)",
        "HELP": "this list (also ?)",
    ]

    /// Parses one line: words separated by spaces or tabs; a PUBLISH description is the rest
    /// of the line and may contain spaces.
    public static func parse(_ line: String) throws(ParseError) -> ConsoleCommand {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let typed = words.first else { throw .empty }
        let name = typed.uppercased()
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
            let afterName = line.drop(while: { $0 == " " || $0 == "\t" }).dropFirst(typed.count)
                .drop(while: { $0 == " " || $0 == "\t" }).dropFirst(arguments[0].count)
                .drop(while: { $0 == " " || $0 == "\t" })
            var description = String(afterName)
            while let last = description.last, last == " " || last == "\t" { description.removeLast() }
            return .publish(fileName: arguments[0], description: description)
        case "LIST_USERS", "QUIT", "SHARED", "IDENTITY":
            guard arguments.isEmpty else { throw usage() }
            switch name {
            case "QUIT": return .quit
            case "SHARED": return .shared
            case "IDENTITY": return .identity
            default: return .listUsers
            }
        case "SHARE", "UNSHARE":
            guard !arguments.isEmpty else { throw usage() }
            // A folder's name may hold spaces: the rest of the line.
            var folder = String(line.drop(while: { $0 == " " || $0 == "\t" }).dropFirst(typed.count))
            folder = String(folder.drop(while: { $0 == " " || $0 == "\t" }))
            while let last = folder.last, last == " " || last == "\t" { folder.removeLast() }
            return name == "SHARE" ? .share(folder: folder) : .unshare(folder: folder)
        case "SEARCH":
            guard !arguments.isEmpty else { throw usage() }
            return .search(query: arguments.joined(separator: " "))
        case "GET_FILE":
            guard arguments.count == 3 else { throw usage() }
            return .getFile(user: arguments[0], remoteName: arguments[1], localName: arguments[2])
        case "HELP", "?", "-H", "--HELP":
            return .help
        default:
            throw .unknown(typed)
        }
    }
}
