import Foundation
import P2PProtocol

/// The whole directory as plain values, and the rules of PROTOCOL.md section 2 that decide
/// each change's result code: the reference every ``DirectoryStore`` is held to. It backs
/// ``InMemoryDirectoryStore``; the SQLite store decides the same rules in SQL, and the rule
/// suite and a randomized comparison in the tests check that both give the same codes and lists.
public struct DirectoryState: Sendable {
    /// Where a connected user listens.
    struct Address: Sendable, Hashable {
        var ip: String
        var port: String
    }

    struct UserEntry: Sendable {
        /// nil while the user is not connected.
        var address: Address?
        /// In the order they were published.
        var files: [StoredFile] = []
        /// The key the user is bound to (docs/PROTOCOL.md, "Keys"), nil while unbound.
        var key: String?
    }

    struct StoredFile: Sendable {
        var file: PublishedFile
        /// Publishing order across all users.
        var sequence: Int
    }

    private(set) var users: [String: UserEntry] = [:]
    /// The connected users sorted by name (in byte order), kept up to date so LIST_USERS never scans everyone.
    private(set) var connectedUsers: [ConnectedUser] = []
    private var nextSequence = 0

    public init() {}

    public var userCount: Int { users.count }

    // MARK: Changes

    /// Applies `change` if the rules allow it and returns its result code; on a non-zero code
    /// nothing changed. The codes that depend on the user's presence are
    /// ``DirectoryRules/gate(_:_:)``'s; only "already there" and "not there" are decided here.
    mutating func apply(_ change: DirectoryChange) -> ResultCode {
        switch DirectoryRules.keyGate(change, boundKey: users[change.user]?.key) {
        case .refuse(let code):
            return code
        case .proceed(let change, let bind):
            let code = applyUnkeyed(change)
            if code == .ok, let bind, users[change.user]?.key == nil { users[change.user]!.key = bind }
            return code
        }
    }

    /// The key `user` is bound to.
    func boundKey(of user: String) -> String? { users[user]?.key }

    /// Unbinds `user` from its key; false when there is no such user.
    mutating func unbind(_ user: String) -> Bool {
        guard users[user] != nil else { return false }
        users[user]!.key = nil
        return true
    }

    private mutating func applyUnkeyed(_ change: DirectoryChange) -> ResultCode {
        if let code = DirectoryRules.gate(change, presence(of: change.user)).code { return code }
        switch change {
        case .keyed:
            preconditionFailure("keys are decided by apply")
        case .register(let user):
            guard users[user] == nil else { return 1 }
            users[user] = UserEntry()
            return .ok

        case .unregister(let user, _):
            let entry = users.removeValue(forKey: user)
            if entry?.address != nil { removeConnected(user) }
            return .ok

        case .connect(let user, let ip, let port):
            users[user]!.address = Address(ip: ip, port: port)
            insertConnected(ConnectedUser(name: user, ip: ip, port: port))
            return .ok

        case .disconnect(let user, _), .expire(let user, _, _):
            users[user]!.address = nil
            removeConnected(user)
            return .ok

        case .publish(let user, let fileName, let description, _):
            guard !users[user]!.files.contains(where: { $0.file.name == fileName }) else { return 3 }
            users[user]!.files.append(
                StoredFile(file: PublishedFile(name: fileName, description: description), sequence: nextSequence))
            nextSequence += 1
            return .ok

        case .delete(let user, let fileName, _):
            guard let index = users[user]!.files.firstIndex(where: { $0.file.name == fileName }) else { return 3 }
            users[user]!.files.remove(at: index)
            return .ok
        }
    }

    /// Whether `user` is registered, and connected at which address.
    func presence(of user: String) -> Presence {
        guard let entry = users[user] else { return .unknown }
        return entry.address.map { .online(ip: $0.ip, port: $0.port) } ?? .offline
    }

    // MARK: Reads

    /// LIST_USERS: 1 requester unknown, 2 requester not connected, else the connected users by name.
    func listUsers(requester: String) -> Reply {
        if let code = DirectoryRules.requesterCode(presence(of: requester)) { return .status(code) }
        return .users(connectedUsers)
    }

    /// LIST_CONTENT: 1 requester unknown, 2 requester not connected, 3 owner unknown, else the
    /// owner's files in publishing order (connected or not).
    func listContent(requester: String, owner: String) -> Reply {
        if let code = DirectoryRules.requesterCode(presence(of: requester)) { return .status(code) }
        guard let ownerEntry = users[owner] else { return .status(DirectoryRules.unknownOwnerCode) }
        return .content(ownerEntry.files.map(\.file))
    }

    var overview: DirectoryOverview {
        DirectoryOverview(
            users: users.count, connectedUsers: connectedUsers.count,
            files: users.values.reduce(0) { $0 + $1.files.count })
    }

    func files(of owner: String) -> [PublishedFile]? {
        users[owner]?.files.map(\.file)
    }

    /// SEARCH: 1 requester unknown, 2 requester not connected, 3 empty query, else the files
    /// matching every word, online owners first, then in publishing order, at most
    /// ``DirectoryRules/maxSearchHits``. A scan of everything: the reference, not the fast way.
    func search(requester: String, query: String) -> Reply {
        if let code = DirectoryRules.requesterCode(presence(of: requester)) { return .status(code) }
        if let code = DirectoryRules.emptySearchCode(query) { return .status(code) }
        return .hits(search(query))
    }

    /// The hits for `query`, whoever asks (none for a query without words).
    func search(_ query: String) -> [SearchHit] {
        let words = DirectoryRules.searchWords(query)
        guard !words.isEmpty else { return [] }
        var found: [(online: Bool, sequence: Int, hit: SearchHit)] = []
        for (owner, entry) in users {
            for stored in entry.files {
                let tokens =
                    DirectoryRules.searchWords(stored.file.name) + DirectoryRules.searchWords(stored.file.description)
                guard words.allSatisfy({ word in tokens.contains { $0.hasPrefix(word) } }) else { continue }
                found.append(
                    (
                        entry.address != nil, stored.sequence,
                        SearchHit(owner: owner, name: stored.file.name, description: stored.file.description)
                    ))
            }
        }
        found.sort { ($0.online ? 0 : 1, $0.sequence) < ($1.online ? 0 : 1, $1.sequence) }
        return found.prefix(DirectoryRules.maxSearchHits).map(\.hit)
    }

    /// Every registered user's name, in byte order.
    var userNames: [String] { users.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) } }

    // MARK: Helpers

    private func connectedIndex(of name: String) -> Int {
        var low = 0
        var high = connectedUsers.count
        while low < high {
            let mid = (low + high) / 2
            // Byte order of the UTF-8 names, as SQL's binary collation sorts them.
            if connectedUsers[mid].name.utf8.lexicographicallyPrecedes(name.utf8) { low = mid + 1 } else { high = mid }
        }
        return low
    }

    private mutating func insertConnected(_ user: ConnectedUser) {
        connectedUsers.insert(user, at: connectedIndex(of: user.name))
    }

    private mutating func removeConnected(_ name: String) {
        let index = connectedIndex(of: name)
        if index < connectedUsers.count, connectedUsers[index].name == name { connectedUsers.remove(at: index) }
    }
}

/// The checks on a change's values that every store makes the same way, before it looks at
/// the directory.
public enum DirectoryRules {
    /// A user name to register: not empty, and no control characters (a newline in a name
    /// would forge lines on the console, in the operation log and in every client's
    /// LIST_USERS; ``ControlCharacters``).
    public static func isValidUserName(_ name: String) -> Bool {
        !name.isEmpty && !ControlCharacters.containsControlCharacters(name)
    }

    /// A file's description: anything but control characters.
    public static func isValidDescription(_ text: String) -> Bool {
        !ControlCharacters.containsControlCharacters(text)
    }

    /// A listening port: decimal digits only, 1 to 65535.
    public static func isValidPort(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 5, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
            let value = Int(text)
        else { return false }
        return (1...65535).contains(value)
    }

    /// The most hits a SEARCH answers with.
    public static let maxSearchHits = 100

    /// The words of a search query or of a file's name or description: runs of letters and
    /// digits (anything else separates, so `lecture-notes.pdf` is `lecture`, `notes`, `pdf`),
    /// lower-cased and without diacritics, as SQLite's FTS5 `unicode61` tokenizer folds them.
    public static func searchWords(_ text: String) -> [String] {
        asciiSearchWords(text) ?? foldedSearchWords(text)
    }

    /// `searchWords` for any text, through Foundation's folding.
    static func foldedSearchWords(_ text: String) -> [String] {
        var words: [String] = []
        var current = String.UnicodeScalarView()
        func flush() {
            if !current.isEmpty {
                words.append(String(current).folding(options: [.caseInsensitive, .diacriticInsensitive], locale: nil))
                current = String.UnicodeScalarView()
            }
        }
        for scalar in text.unicodeScalars {
            if scalar.properties.isAlphabetic || scalar.properties.numericType != nil {
                current.append(scalar)
            } else if scalar.properties.generalCategory == .nonspacingMark, !current.isEmpty {
                // A combining accent belongs to its letter (and goes with the folding).
                current.append(scalar)
            } else {
                flush()
            }
        }
        flush()
        return words
    }

    /// `searchWords` of an ASCII text without Foundation's folding: 0.75 us for
    /// `file1.txt bench file` against 6.7 us (the SQLite store's writer splits every file it
    /// publishes while searches keep bitmaps). Nil when `text` is not ASCII.
    private static func asciiSearchWords(_ text: String) -> [String]? {
        var text = text
        return text.withUTF8 { bytes -> [String]? in
            guard bytes.allSatisfy({ $0 < 0x80 }) else { return nil }
            var words: [String] = []
            var word: [UInt8] = []
            for byte in bytes {
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"): word.append(byte)
                case UInt8(ascii: "A")...UInt8(ascii: "Z"): word.append(byte + 32)
                default:
                    if !word.isEmpty {
                        words.append(String(decoding: word, as: UTF8.self))
                        word.removeAll(keepingCapacity: true)
                    }
                }
            }
            if !word.isEmpty { words.append(String(decoding: word, as: UTF8.self)) }
            return words
        }
    }

    /// File names are one word (the console splits on spaces), not empty, and hold no control
    /// characters.
    public static func isValidFileName(_ name: String) -> Bool {
        !name.isEmpty && !name.contains(where: { $0.isWhitespace })
            && !ControlCharacters.containsControlCharacters(name)
    }
}
