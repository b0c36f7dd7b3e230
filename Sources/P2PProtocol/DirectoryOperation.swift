/// The operations a client can ask of the directory server: the eight of PROTOCOL.md, and
/// SEARCH, our extension (docs/PROTOCOL.md), which third-party servers do not know.
///
/// On the wire an operation is its upper-case name as the first NUL-terminated field.
public enum DirectoryOperation: String, CaseIterable, Sendable, Hashable {
    case register = "REGISTER"
    case unregister = "UNREGISTER"
    case connect = "CONNECT"
    case disconnect = "DISCONNECT"
    case publish = "PUBLISH"
    case delete = "DELETE"
    case listUsers = "LIST_USERS"
    case listContent = "LIST_CONTENT"
    /// Extension: files whose name or description match every word of a query.
    case search = "SEARCH"
    /// Extension: turns the connection into the connected user's control connection
    /// (``ControlMessage``), sent only to servers that announce it (``ServerCapabilities``).
    case control = "CONTROL"
    /// Extension: one side of a hole punch shows the server the public address and port of the
    /// socket it will punch from (docs/PROTOCOL.md, "Hole punching"); sent only to servers that
    /// announce it.
    case rendezvous = "RENDEZVOUS"
    /// Extension: one side of a relayed transfer; the connection then carries the bytes between
    /// the two sides through the server (docs/PROTOCOL.md, "Relay").
    case relay = "RELAY"
    /// Extension: opens a keyed session for a user (docs/PROTOCOL.md, "Keys"): the client's
    /// public key, a fresh key-agreement key and a signature over both; answered with the
    /// session's id and the server's key-agreement key (``IdentifyReply``).
    case identify = "IDENTIFY"

    /// Whether the operation is one of ours that the third-party programs do not speak.
    public var isExtension: Bool { self != .register && self != .unregister && self != .connect && self != .disconnect
        && self != .publish && self != .delete && self != .listUsers && self != .listContent }

    /// How many fields follow the operation name, the date-time included.
    public var argumentCount: Int {
        switch self {
        case .register, .unregister, .disconnect, .listUsers, .control: return 2
        case .connect, .delete, .listContent, .search, .rendezvous, .relay: return 3
        case .publish: return 4
        case .identify: return 5
        }
    }

    /// The code that means "any other error" for this operation (PROTOCOL.md section 2).
    public var otherErrorCode: ResultCode {
        switch self {
        case .register, .unregister: return 2
        case .connect, .disconnect, .listUsers, .search, .control, .rendezvous, .relay, .identify: return 3
        case .publish, .delete, .listContent: return 4
        }
    }

    /// Whether a request of this operation may come keyed (``RequestProof``): the changes of a
    /// user, and its control connection.
    public var isKeyable: Bool {
        switch self {
        case .register, .unregister, .connect, .disconnect, .publish, .delete, .control: return true
        case .listUsers, .listContent, .search, .rendezvous, .relay, .identify: return false
        }
    }

    /// Whether a successful reply carries a list after the code.
    public var repliesWithList: Bool {
        self == .listUsers || self == .listContent || self == .search
    }
}
