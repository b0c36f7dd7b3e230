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
    /// Every file a user published under a folder, into a folder of the same name here.
    case getFolder(user: String, folder: String)
    /// Saves a search that runs again and fetches each new match once.
    case wish(query: String)
    /// The saved searches.
    case wishes
    /// Forgets a saved search.
    case unwish(id: Int)
    /// The downloads and uploads of this run: state, progress, rate (nothing is sent).
    case transfers
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
    public static var names: [String] { table.map(\.name) }

    /// What `help` prints: one command with its arguments per line.
    public static var helpLines: [String] {
        let width = table.map(\.usage.count).max() ?? 0
        return table.map { $0.usage.padding(toLength: width + 2, withPad: " ", startingAt: 0) + $0.summary }
            + ["Command names may be typed in any case. End of input (Ctrl+D) or Ctrl+C acts like QUIT."]
    }

    /// One command of the shell: its name, how it is typed, what it does, and how its words
    /// are read (what `help` prints and what the parser does are kept side by side).
    struct Entry: Sendable {
        let name: String
        /// Other names it answers to (`?` for HELP).
        var aliases: [String] = []
        let usage: String
        let summary: String
        /// Makes the command from what was typed after its name; nil when that does not fit
        /// the usage.
        let parse: @Sendable (Typed) -> ConsoleCommand?
    }

    /// A typed line, after its command's name.
    struct Typed: Sendable {
        /// The words after the name.
        let arguments: [String]
        /// Everything after the name, its outer spaces and tabs trimmed (for arguments that may
        /// hold spaces).
        let rest: String

        /// The one word, when exactly one was typed.
        var single: String? { arguments.count == 1 ? arguments[0] : nil }
    }

    /// The shell's commands, in the order `help` lists them.
    static let table: [Entry] = [
        Entry(
            name: "REGISTER", usage: "REGISTER <userName>", summary: "create a user in the directory",
            parse: { $0.single.map { .register(user: $0) } }),
        Entry(
            name: "UNREGISTER", usage: "UNREGISTER <userName>", summary: "remove a user and everything it published",
            parse: { $0.single.map { .unregister(user: $0) } }),
        Entry(
            name: "CONNECT", usage: "CONNECT <userName>",
            summary: "go online as this user and serve the files it published to peers",
            parse: { $0.single.map { .connect(user: $0) } }),
        Entry(
            name: "DISCONNECT", usage: "DISCONNECT <userName>", summary: "go offline",
            parse: { $0.single.map { .disconnect(user: $0) } }),
        Entry(
            name: "PUBLISH", usage: "PUBLISH <fileName> <description>",
            summary: "list a file of the shared folder, with a description",
            parse: { typed in
                guard typed.arguments.count >= 2 else { return nil }
                // The description keeps its inner spacing: everything after the file name.
                let description = trimmed(typed.rest.dropFirst(typed.arguments[0].count))
                return .publish(fileName: typed.arguments[0], description: description)
            }),
        Entry(
            name: "DELETE", usage: "DELETE <fileName>", summary: "withdraw a published file",
            parse: { $0.single.map { .delete(fileName: $0) } }),
        Entry(
            name: "LIST_USERS", usage: "LIST_USERS", summary: "the users online, with their addresses",
            parse: { $0.arguments.isEmpty ? .listUsers : nil }),
        Entry(
            name: "LIST_CONTENT", usage: "LIST_CONTENT <userName>", summary: "the files a user published",
            parse: { $0.single.map { .listContent(user: $0) } }),
        Entry(
            name: "GET_FILE", usage: "GET_FILE <userName> <remoteFileName> <localFileName>",
            summary: "download a file from a user's peer (alice,bob: from both at once)",
            parse: { typed in
                guard typed.arguments.count == 3 else { return nil }
                return .getFile(user: typed.arguments[0], remoteName: typed.arguments[1], localName: typed.arguments[2])
            }),
        Entry(
            name: "GET_FOLDER", usage: "GET_FOLDER <userName> <folder>",
            summary: "download a user's folder into a folder of that name",
            parse: { typed in
                guard typed.arguments.count == 2 else { return nil }
                return .getFolder(user: typed.arguments[0], folder: typed.arguments[1])
            }),
        Entry(
            name: "SEARCH", usage: "SEARCH <words...>",
            summary: "find files of every user by words of their names or descriptions",
            parse: { $0.arguments.isEmpty ? nil : .search(query: $0.arguments.joined(separator: " ")) }),
        Entry(
            name: "SHARE", usage: "SHARE <folder>", summary: "publish a folder's files and follow its changes",
            // A folder's name may hold spaces: the rest of the line.
            parse: { $0.arguments.isEmpty ? nil : .share(folder: $0.rest) }),
        Entry(
            name: "UNSHARE", usage: "UNSHARE <folder>",
            summary: "stop sharing a folder; its files leave the directory",
            parse: { $0.arguments.isEmpty ? nil : .unshare(folder: $0.rest) }),
        Entry(
            name: "SHARED", usage: "SHARED", summary: "the shared folders: files published, skipped and why",
            parse: { $0.arguments.isEmpty ? .shared : nil }),
        Entry(
            name: "WISH", usage: "WISH <words...>",
            summary: "save a search; each new match is fetched once",
            parse: { $0.arguments.isEmpty ? nil : .wish(query: $0.arguments.joined(separator: " ")) }),
        Entry(
            name: "WISHES", usage: "WISHES", summary: "the saved searches and their matches",
            parse: { $0.arguments.isEmpty ? .wishes : nil }),
        Entry(
            name: "UNWISH", usage: "UNWISH <number>", summary: "forget a saved search",
            parse: { $0.single.flatMap { Int($0) }.map { .unwish(id: $0) } }),
        Entry(
            name: "TRANSFERS", usage: "TRANSFERS", summary: "downloads and uploads: state, progress, rate",
            parse: { $0.arguments.isEmpty ? .transfers : nil }),
        Entry(
            name: "IDENTITY", usage: "IDENTITY", summary: "this client's key: its fingerprint, its file",
            parse: { $0.arguments.isEmpty ? .identity : nil }),
        Entry(
            name: "QUIT", usage: "QUIT", summary: "disconnect and leave (also end of input)",
            parse: { $0.arguments.isEmpty ? .quit : nil }),
        Entry(
            name: "HELP", aliases: ["?", "-H", "--HELP"], usage: "HELP", summary: "this list (also ?)",
            parse: { _ in .help }),
    ]

    /// The entry `name` (any case) names, if any.
    static func entry(named name: String) -> Entry? {
        let name = name.uppercased()
        return table.first { $0.name == name || $0.aliases.contains(name) }
    }

    /// Parses one line: words separated by spaces or tabs; a PUBLISH description and a SHARE
    /// folder are the rest of the line and may contain spaces.
    public static func parse(_ line: String) throws(ParseError) -> ConsoleCommand {
        let words = line.split(whereSeparator: isBlank).map(String.init)
        guard let typed = words.first else { throw .empty }
        guard let entry = entry(named: typed) else { throw .unknown(typed) }
        let rest = trimmed(line.drop(while: isBlank).dropFirst(typed.count))
        guard let command = entry.parse(Typed(arguments: Array(words.dropFirst()), rest: rest)) else {
            throw .usage(entry.usage)
        }
        return command
    }

    private static func isBlank(_ character: Character) -> Bool { character == " " || character == "\t" }

    private static func trimmed(_ text: Substring) -> String {
        var text = text.drop(while: isBlank)
        while let last = text.last, isBlank(last) { text.removeLast() }
        return String(text)
    }
}
