import P2PProtocol

/// A request that changes the directory, with everything the rules need to decide it.
///
/// `from` is the IP address the request came from, when the owner check is on: a connected
/// user can then be changed (DISCONNECT, UNREGISTER, PUBLISH, DELETE) only from the address it
/// connected from. nil means no check (`--owner-check off`, or a change the server makes
/// itself).
public enum DirectoryChange: Sendable, Hashable {
    case register(user: String)
    case unregister(user: String, from: String? = nil)
    /// `ip` is the address the server saw the request come from.
    case connect(user: String, ip: String, port: String)
    case disconnect(user: String, from: String? = nil)
    case publish(user: String, fileName: String, description: String, from: String? = nil)
    case delete(user: String, fileName: String, from: String? = nil)
    /// Takes `user` offline if it is still connected at exactly `ip` and `port` (its peer did
    /// not answer the server's checks); a user that reconnected meanwhile stays. Not a
    /// protocol operation: the server makes it. Codes as DISCONNECT: 0 done, 1 no such user,
    /// 2 not connected (or connected at another address).
    case expire(user: String, ip: String, port: String)

    /// The protocol operation whose codes the change answers with.
    public var operation: DirectoryOperation {
        switch self {
        case .register: return .register
        case .unregister: return .unregister
        case .connect: return .connect
        case .disconnect, .expire: return .disconnect
        case .publish: return .publish
        case .delete: return .delete
        }
    }

    /// The user the change is about.
    public var user: String {
        switch self {
        case .register(let user), .unregister(let user, _), .connect(let user, _, _), .disconnect(let user, _),
            .publish(let user, _, _, _), .delete(let user, _, _), .expire(let user, _, _):
            return user
        }
    }
}

extension DirectoryChange {
    /// The log line for this change refused by the owner check, the user being connected from
    /// `connectedFrom` (every store logs the same line).
    package func ownerCheckRefusal(connectedFrom: String) -> String {
        let from: String? =
            switch self {
            case .unregister(_, let from), .disconnect(_, let from), .publish(_, _, _, let from),
                .delete(_, _, let from):
                from
            default: nil
            }
        return "\(operation.rawValue) of \(user) refused by the owner check: the user is connected from "
            + "\(connectedFrom), the request came from \(from ?? "?")"
    }
}
