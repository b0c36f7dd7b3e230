/// A directory's rows, for copying it from one store to another (`p2p-server copy-directory`):
/// its users with their addresses and keys, by name, and its files in publishing order. A copy goes a
/// page at a time (``DirectoryContentsSource``), so that its memory does not grow with the
/// directory.
public struct DirectoryContents: Sendable {
    public struct User: Sendable, Hashable {
        public var name: String
        /// nil while the user is not connected.
        public var ip: String?
        public var port: String?
        /// The key the user is bound to, nil while unbound (docs/PROTOCOL.md, "Keys").
        public var key: String?

        public init(name: String, ip: String?, port: String?, key: String? = nil) {
            self.name = name
            self.ip = ip
            self.port = port
            self.key = key
        }
    }

    public struct File: Sendable, Hashable {
        public var owner: String
        public var name: String
        public var description: String

        public init(owner: String, name: String, description: String) {
            self.owner = owner
            self.name = name
            self.description = description
        }
    }

    public var users: [User]
    public var files: [File]

    public init(users: [User], files: [File]) {
        self.users = users
        self.files = files
    }
}

/// Where a copy reads a directory from, a page at a time. Each read starts after the last row
/// of the page before (`nil` / 0 for the first page); an empty page is the end.
public protocol DirectoryContentsSource: Sendable {
    /// Up to `limit` users with names after `name`, by name.
    func users(after name: String?, limit: Int) async throws -> [DirectoryContents.User]
    /// Up to `limit` files published after the file `id`, in publishing order, with the id of
    /// the last one (for the next page).
    func files(after id: Int64, limit: Int) async throws -> (files: [DirectoryContents.File], lastID: Int64)
}
