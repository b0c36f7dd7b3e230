import P2PProtocol

/// A request that changes the directory, with everything the rules need to decide it (for
/// CONNECT, the address the server saw the request come from).
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
}
