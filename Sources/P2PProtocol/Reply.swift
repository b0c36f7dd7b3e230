/// A connected user as LIST_USERS reports it.
public struct ConnectedUser: Sendable, Hashable {
    public var name: String
    public var ip: String
    /// The listening port as the user sent it in CONNECT (decimal text).
    public var port: String

    public init(name: String, ip: String, port: String) {
        self.name = name
        self.ip = ip
        self.port = port
    }
}

/// A published file as LIST_CONTENT reports it.
public struct PublishedFile: Sendable, Hashable {
    public var name: String
    public var description: String

    public init(name: String, description: String) {
        self.name = name
        self.description = description
    }
}

/// A file found by SEARCH: who published it, its name and description.
public struct SearchHit: Sendable, Hashable {
    public var owner: String
    public var name: String
    public var description: String

    public init(owner: String, name: String, description: String) {
        self.owner = owner
        self.name = name
        self.description = description
    }
}

/// The directory server's answer to one request.
///
/// On the wire: the result code (section 3), and on success of LIST_USERS / LIST_CONTENT /
/// SEARCH the entry count as a decimal field followed by each entry's fields.
public enum Reply: Sendable, Hashable {
    /// A bare result code: every reply but a successful list.
    case status(ResultCode)
    /// LIST_USERS answered 0.
    case users([ConnectedUser])
    /// LIST_CONTENT answered 0.
    case content([PublishedFile])
    /// SEARCH answered 0.
    case hits([SearchHit])

    public var code: ResultCode {
        switch self {
        case .status(let code): return code
        case .users, .content, .hits: return .ok
        }
    }
}
