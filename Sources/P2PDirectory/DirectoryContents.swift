/// Everything of a directory, for copying it from one store to another
/// (`p2p-server copy-directory`): its users with their addresses, by name, and its files in
/// publishing order.
public struct DirectoryContents: Sendable {
    public struct User: Sendable, Hashable {
        public var name: String
        /// nil while the user is not connected.
        public var ip: String?
        public var port: String?

        public init(name: String, ip: String?, port: String?) {
            self.name = name
            self.ip = ip
            self.port = port
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
