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
    /// The change, proven by the holder of `key` (a keyed request, docs/PROTOCOL.md "Keys"):
    /// a user bound to a key is changed only so (``DirectoryRules/keyGate(_:boundKey:)``).
    indirect case keyed(DirectoryChange, key: String)

    /// The change itself and the key that proved it (nil: a plain request).
    public var unkeyed: (change: DirectoryChange, key: String?) {
        if case .keyed(let change, let key) = self { return (change.unkeyed.change, key) }
        return (self, nil)
    }

    /// The protocol operation whose codes the change answers with.
    public var operation: DirectoryOperation {
        switch self {
        case .keyed(let change, _): return change.operation
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
        case .keyed(let change, _): return change.user
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
        if case .keyed(let change, _) = self { return change.ownerCheckRefusal(connectedFrom: connectedFrom) }
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

extension DirectoryChange {
    /// The log line for this change refused by the key binding (every store logs the same line).
    package var keyRefusal: String {
        let (change, key) = unkeyed
        return
            """
            \(change.operation.rawValue) of \(ControlCharacters.escaped(change.user)) refused: the user is bound \
            to a key 
            """
            + (key == nil ? "and the request was plain" : "and the request was proven by another one")
    }

    /// The same change without the owner check (the key proved it, wherever it came from).
    var withoutOwnerCheck: DirectoryChange {
        switch self {
        case .unregister(let user, _): return .unregister(user: user)
        case .disconnect(let user, _): return .disconnect(user: user)
        case .publish(let user, let fileName, let description, _):
            return .publish(user: user, fileName: fileName, description: description)
        case .delete(let user, let fileName, _): return .delete(user: user, fileName: fileName)
        case .register, .connect, .expire, .keyed: return self
        }
    }
}

/// What the key binding decides about a change before the rules of PROTOCOL.md do.
public enum KeyDecision: Sendable, Hashable {
    /// Decide `change` (the key's proof taken off, and with it the owner check when the key is
    /// the user's own) by the rules; when it is answered 0, bind the user to `bind`.
    case proceed(DirectoryChange, bind: String?)
    /// Refused with this code: the user is bound to a key and the request did not prove it.
    case refuse(ResultCode)
}

extension DirectoryRules {
    /// The key binding's rule, the same in every store, decided on the user's row with the
    /// rest: a user bound to a key (`boundKey`) is changed only by a request proven by that key,
    /// from any address (an outsider's plain request, or a neighbour's behind the same NAT, gets
    /// the operation's "other" code); an unbound user keeps the address rules, and is bound by
    /// a keyed REGISTER that creates it or a keyed CONNECT those rules accept. The server's own
    /// EXPIRE needs no key.
    public static func keyGate(_ change: DirectoryChange, boundKey: String?) -> KeyDecision {
        let (inner, key) = change.unkeyed
        switch inner {
        case .expire, .keyed: return .proceed(inner, bind: nil)
        // A name already there is answered 1 by the store, bound or not; only a new one is bound.
        case .register: return .proceed(inner, bind: key)
        case .unregister, .connect, .disconnect, .publish, .delete: break
        }
        if let boundKey {
            guard key == boundKey else { return .refuse(inner.operation.otherErrorCode) }
            return .proceed(inner.withoutOwnerCheck, bind: nil)
        }
        if case .connect = inner, let key { return .proceed(inner, bind: key) }
        return .proceed(inner, bind: nil)
    }
}
