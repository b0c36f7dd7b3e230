/// The eight operations a client can ask of the directory server.
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

    /// How many fields follow the operation name, the date-time included.
    public var argumentCount: Int {
        switch self {
        case .register, .unregister, .disconnect, .listUsers: return 2
        case .connect, .delete, .listContent: return 3
        case .publish: return 4
        }
    }

    /// The code that means "any other error" for this operation (PROTOCOL.md section 2).
    public var otherErrorCode: ResultCode {
        switch self {
        case .register, .unregister: return 2
        case .connect, .disconnect, .listUsers: return 3
        case .publish, .delete, .listContent: return 4
        }
    }

    /// Whether a successful reply carries a list after the code.
    public var repliesWithList: Bool {
        self == .listUsers || self == .listContent
    }
}
