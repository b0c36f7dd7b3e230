import P2PProtocol

/// Whether a user is registered, and connected at which address: all the rules need to know
/// of the directory to decide a change's codes, apart from what only the store can tell (a name
/// or a file already there).
public enum Presence: Sendable, Hashable {
    case unknown
    case offline
    case online(ip: String, port: String)
}

/// What the rules decide about a change from its user's presence, before the store makes it.
public enum Gate: Sendable, Hashable {
    /// The store may make the change (and still answer a code of its own: a name already
    /// registered, a file already published or not published).
    case proceed
    /// Refused with this code.
    case refuse(ResultCode)
    /// Refused with this code by the owner check: the user is connected from `connectedFrom`
    /// and the request came from elsewhere (the store logs both addresses).
    case refuseByOwnerCheck(ResultCode, connectedFrom: String)
}

extension DirectoryRules {
    /// The codes of PROTOCOL.md section 2 that depend on the user's presence and on the
    /// change's own values, in the order the spec's table gives them. Every store calls this:
    /// the reference (`DirectoryState`), the SQLite store (after a conditional statement changed
    /// nothing, to say why), the PostgreSQL store (on the user's locked row).
    public static func gate(_ change: DirectoryChange, _ presence: Presence) -> Gate {
        switch change {
        case .keyed(let change, _):
            // (Stores decide the key first, ``keyGate(_:boundKey:)``, and the rest on the change itself.)
            return gate(change, presence)

        case .register(let user):
            return isValidUserName(user) ? .proceed : .refuse(change.operation.otherErrorCode)

        case .unregister(_, let from):
            guard presence != .unknown else { return .refuse(1) }
            return ownerCheck(presence, from, code: 2) ?? .proceed

        case .connect(_, _, let port):
            guard presence != .unknown else { return .refuse(1) }
            guard isValidPort(port) else { return .refuse(3) }
            if case .online = presence { return .refuse(2) }
            return .proceed

        case .disconnect(_, let from):
            guard presence != .unknown else { return .refuse(1) }
            guard case .online = presence else { return .refuse(2) }
            return ownerCheck(presence, from, code: 3) ?? .proceed

        case .expire(_, let ip, let port):
            guard presence != .unknown else { return .refuse(1) }
            // Only the connection that was checked: not one made again meanwhile.
            return presence == .online(ip: ip, port: port) ? .proceed : .refuse(2)

        case .publish(_, let fileName, let description, let from):
            if let refusal = requiresConnected(presence) { return refusal }
            if let refusal = ownerCheck(presence, from, code: 4) { return refusal }
            return isValidFileName(fileName) && isValidDescription(description) ? .proceed : .refuse(4)

        case .delete(_, _, let from):
            if let refusal = requiresConnected(presence) { return refusal }
            return ownerCheck(presence, from, code: 4) ?? .proceed
        }
    }

    /// LIST_CONTENT of an owner that is not registered, once the requester may read.
    public static let unknownOwnerCode: ResultCode = 3

    /// SEARCH, once the requester may read: 3 when the query has no word to look for
    /// (``searchWords(_:)``), nil when it has.
    public static func emptySearchCode(_ query: String) -> ResultCode? {
        searchWords(query).isEmpty ? 3 : nil
    }

    /// LIST_USERS, LIST_CONTENT and SEARCH: 1 when the requester is not registered, 2 when it
    /// is not connected, nil when it may read.
    public static func requesterCode(_ presence: Presence) -> ResultCode? {
        switch presence {
        case .unknown: return requesterCode(registered: false, connected: false)
        case .offline: return requesterCode(registered: true, connected: false)
        case .online: return requesterCode(registered: true, connected: true)
        }
    }

    /// The same, for a store that reads the two facts in the query that reads the list.
    public static func requesterCode(registered: Bool, connected: Bool) -> ResultCode? {
        !registered ? 1 : !connected ? 2 : nil
    }

    /// 1 not registered, 2 not connected, nil connected.
    private static func requiresConnected(_ presence: Presence) -> Gate? {
        requesterCode(presence).map { .refuse($0) }
    }

    /// The owner check: a connected user is changed only from the address it connected from
    /// (no check when `from` is nil: the option is off, or the server made the change itself).
    private static func ownerCheck(_ presence: Presence, _ from: String?, code: ResultCode) -> Gate? {
        guard let from, case .online(let ip, _) = presence, ip != from else { return nil }
        return .refuseByOwnerCheck(code, connectedFrom: ip)
    }
}

extension Gate {
    /// The refusal's code, nil for `proceed`.
    public var code: ResultCode? {
        switch self {
        case .proceed: return nil
        case .refuse(let code), .refuseByOwnerCheck(let code, _): return code
        }
    }
}
