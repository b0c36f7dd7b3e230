import NIOCore

/// What our directory server says it can do beyond the spec, asked with an ordinary
/// `LIST_CONTENT` for a reserved owner name (``ReservedFileName/capabilities``): a third-party
/// server sees a well-formed request for a user that does not exist and answers 1, 2 or 3; ours
/// answers 0 and lists each capability as a "file" whose name is the capability and whose
/// description is its version. So our client learns what the server speaks without ever
/// sending a third-party server a request it does not know.
public enum ServerCapabilities {
    /// The control connection (``DirectoryOperation/control``, ``ControlMessage``), version 1.
    public static let control = PublishedFile(name: "control", description: "1")
    /// Hole punching (``ControlMessage/punchRequest(id:owner:)``, ``DirectoryOperation/rendezvous``).
    public static let punch = PublishedFile(name: "punch", description: "1")

    /// Relaying (``ControlMessage/relayRequest(id:owner:)``, ``DirectoryOperation/relay``):
    /// announced only when the operator allows it (`p2p-server --relay-limit`).
    public static let relay = PublishedFile(name: "relay", description: "1")

    /// Keys (``DirectoryOperation/identify``, ``RequestProof``): users bound to a key, changed
    /// only by requests that prove it.
    public static let identity = PublishedFile(name: "identity", description: "1")

    /// Everything this version of our server can announce.
    public static let all: [PublishedFile] = [control, punch, relay, identity]
}

/// How a connected user can be reached, as the server knows it (``ControlMessage/whoReply``).
public enum PeerRoute: String, Sendable, Hashable, CaseIterable {
    /// The server reached its listening port from outside: connect to it directly.
    case reachable
    /// The server could not: it is behind a NAT or a firewall; only a connection it makes
    /// itself (a reversed one) gets through.
    case unreachable
    /// Its control connection is open, but the check of its port has not finished yet.
    case unknown
    /// Connected without a control connection (a third-party client, say): try it directly.
    case direct
    /// Not connected.
    case offline
}

/// The messages of the control connection (docs/PROTOCOL.md, "Extension: control connection").
///
/// After `CONTROL·<date-time>·<user>·` is answered `0`, the connection stays open and both sides
/// send messages: each is NUL-terminated fields, the first naming the message, the count of the
/// rest fixed by it. The server sends ``ping`` every keepalive interval and the client answers
/// each with one; a side that receives nothing for three intervals takes the other for gone.
public enum ControlMessage: Sendable, Hashable {
    /// `PING·`: the server every keepalive interval, the client in answer.
    case ping
    /// `KEEPALIVE·<milliseconds>·`, server to client, first thing after the `0`: the interval
    /// at which both sides send `PING`.
    case keepalive(milliseconds: Int)
    /// `REACHABLE·1·` or `REACHABLE·0·`, server to client: whether the server could connect to
    /// the user's listening port from outside.
    case reachability(Bool)
    /// `WHO·<id>·<user>·`, client to server: how `user` can be reached.
    case whoRequest(id: String, user: String)
    /// `WHO_IS·<id>·<route>·`, server to client.
    case whoReply(id: String, route: PeerRoute)
    /// `KEY·<id>·<user>·`, client to server: the public key `user` is bound to.
    case keyRequest(id: String, user: String)
    /// `KEY_IS·<id>·<key>·`, server to client: the bound public key (base64), or
    /// ``ControlMessage/noKey`` when the user is not bound (a third-party client's, or unknown).
    case keyReply(id: String, key: String)
    /// `REVERSE·<id>·<owner>·`, client to server: have `owner` connect to this client's
    /// listening port.
    case reverseRequest(id: String, owner: String)
    /// `REVERSING·<id>·<code>·<token>·`, server to client: code 0 and the token the owner will
    /// present; 1 the owner has no control connection; 2 this client is not reachable itself.
    case reverseReply(id: String, code: Int, token: String)
    /// `DIAL·<token>·<host>·<port>·`, server to the owner: connect to `host`:`port`, present
    /// `token` (``PeerRequest/reversed(token:)``) and serve the requests that come back.
    case dial(token: String, host: String, port: String)
    /// `PUNCH·<id>·<owner>·`, client to server: both this client and `owner` are behind NATs;
    /// have both punch a connection through them at once.
    case punchRequest(id: String, owner: String)
    /// `PUNCHING·<id>·<code>·<token>·`, server to client: code 0 and the punch's token; 1 the
    /// owner has no control connection.
    case punchReply(id: String, code: Int, token: String)
    /// `RELAY·<id>·<owner>·`, client to server: no connection can be made between this client
    /// and `owner`; relay one through the server.
    case relayRequest(id: String, owner: String)
    /// `RELAYING·<id>·<code>·<token>·`, server to client: 0 and the token; 1 the owner has no
    /// control connection; 2 the server does not relay, or relays as many transfers as it allows.
    case relayReply(id: String, code: Int, token: String)
    /// `RELAY_TO·<token>·`, server to the owner: open the relay `token` (a `RELAY` request on a
    /// new connection to the server), present the token on it once answered 0, and serve.
    case relayTo(token: String)
    /// `MEET·<token>·`, server to the owner: take part in the punch `token` (a `RENDEZVOUS`
    /// with it, then connect to the address it answers), present the token and serve.
    case meet(token: String)

    /// What ``keyReply(id:key:)`` says for a user bound to no key.
    public static let noKey = "-"
    /// What ``keyReply(id:key:)`` says when the server cannot tell now (its store failed): not
    /// "no key", so that a downloader never takes a failure for a user without one.
    public static let unknownKey = "?"

    /// The message's fields, its name first (as on the wire).
    public var fields: [String] {
        switch self {
        case .ping: return ["PING"]
        case .keepalive(let milliseconds): return ["KEEPALIVE", String(milliseconds)]
        case .reachability(let reachable): return ["REACHABLE", reachable ? "1" : "0"]
        case .whoRequest(let id, let user): return ["WHO", id, user]
        case .whoReply(let id, let route): return ["WHO_IS", id, route.rawValue]
        case .keyRequest(let id, let user): return ["KEY", id, user]
        case .keyReply(let id, let key): return ["KEY_IS", id, key]
        case .reverseRequest(let id, let owner): return ["REVERSE", id, owner]
        case .reverseReply(let id, let code, let token): return ["REVERSING", id, String(code), token]
        case .dial(let token, let host, let port): return ["DIAL", token, host, port]
        case .punchRequest(let id, let owner): return ["PUNCH", id, owner]
        case .punchReply(let id, let code, let token): return ["PUNCHING", id, String(code), token]
        case .meet(let token): return ["MEET", token]
        case .relayRequest(let id, let owner): return ["RELAY", id, owner]
        case .relayReply(let id, let code, let token): return ["RELAYING", id, String(code), token]
        case .relayTo(let token): return ["RELAY_TO", token]
        }
    }

    /// How many fields follow each message's name.
    static let argumentCounts: [String: Int] = [
        "PING": 0, "KEEPALIVE": 1, "REACHABLE": 1, "WHO": 2, "WHO_IS": 2, "KEY": 2, "KEY_IS": 2, "REVERSE": 2,
        "REVERSING": 3, "DIAL": 3,
        "PUNCH": 2, "PUNCHING": 3, "MEET": 1, "RELAY": 2, "RELAYING": 3, "RELAY_TO": 1,
    ]

    /// The message of `fields` (its name first), as read from the wire.
    public init(fields: [String]) throws(ProtocolError) {
        guard let name = fields.first, let count = Self.argumentCounts[name] else {
            throw .unknownOperation(fields.first ?? "")
        }
        guard fields.count == count + 1 else { throw .truncated(operation: name, fieldsReceived: fields.count) }
        try self.init(name: name, arguments: Array(fields.dropFirst()))
    }

    init(name: String, arguments a: [String]) throws(ProtocolError) {
        switch name {
        case "PING": self = .ping
        case "KEEPALIVE":
            guard let milliseconds = Int(a[0]), milliseconds > 0 else { throw .invalidCount(a[0]) }
            self = .keepalive(milliseconds: milliseconds)
        case "REACHABLE": self = .reachability(a[0] == "1")
        case "WHO": self = .whoRequest(id: a[0], user: a[1])
        case "WHO_IS":
            guard let route = PeerRoute(rawValue: a[1]) else { throw .invalidCount(a[1]) }
            self = .whoReply(id: a[0], route: route)
        case "KEY": self = .keyRequest(id: a[0], user: a[1])
        case "KEY_IS": self = .keyReply(id: a[0], key: a[1])
        case "REVERSE": self = .reverseRequest(id: a[0], owner: a[1])
        case "REVERSING":
            guard let code = Int(a[1]) else { throw .invalidCount(a[1]) }
            self = .reverseReply(id: a[0], code: code, token: a[2])
        case "DIAL": self = .dial(token: a[0], host: a[1], port: a[2])
        case "PUNCH": self = .punchRequest(id: a[0], owner: a[1])
        case "PUNCHING":
            guard let code = Int(a[1]) else { throw .invalidCount(a[1]) }
            self = .punchReply(id: a[0], code: code, token: a[2])
        case "MEET": self = .meet(token: a[0])
        case "RELAY": self = .relayRequest(id: a[0], owner: a[1])
        case "RELAYING":
            guard let code = Int(a[1]) else { throw .invalidCount(a[1]) }
            self = .relayReply(id: a[0], code: code, token: a[2])
        case "RELAY_TO": self = .relayTo(token: a[0])
        default: throw .unknownOperation(name)
        }
    }

    /// Writes the message; throws, writing nothing, when a field is over the limit or holds NUL.
    public func encode(into buffer: inout ByteBuffer) throws(ProtocolError) {
        try buffer.writeFields(fields)
    }

    /// A fresh one-time token: 128 random bits in 32 lowercase hex digits.
    public static func makeToken() -> String {
        var generator = SystemRandomNumberGenerator()
        let high = generator.next() as UInt64
        let low = generator.next() as UInt64
        func hex(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return hex(high) + hex(low)
    }
}

/// Reads control messages from bytes that may arrive split anywhere.
public struct ControlMessageDecoder: Sendable {
    private var reader = FieldReader()
    private var buffer = ByteBuffer()
    private var name: String?
    private var arguments: [String] = []

    public init() {}

    /// Adds `bytes` to what is buffered.
    public mutating func append(_ bytes: inout ByteBuffer) {
        buffer.writeBuffer(&bytes)
    }

    /// The next complete message, nil while more bytes are needed.
    public mutating func next() throws(ProtocolError) -> ControlMessage? {
        while let field = try reader.readField(from: &buffer) {
            guard let current = name else {
                guard ControlMessage.argumentCounts[field] != nil else { throw .unknownOperation(field) }
                name = field
                if ControlMessage.argumentCounts[field] == 0 { return try complete() }
                continue
            }
            arguments.append(field)
            if arguments.count == ControlMessage.argumentCounts[current] { return try complete() }
        }
        if buffer.readableBytes == 0 { buffer.clear() }
        return nil
    }

    private mutating func complete() throws(ProtocolError) -> ControlMessage {
        let message = try ControlMessage(name: name!, arguments: arguments)
        name = nil
        arguments.removeAll(keepingCapacity: true)
        return message
    }
}

/// The answer to `RENDEZVOUS·<date-time>·<user>·<token>·`, once both sides of the punch have
/// shown themselves: `0·<ip>·<port>·`, the other side's public address and port as the server
/// saw them; `1·` no such punch (or not one of this user's); `2·` the other side did not come
/// within the wait; `3·` error.
public struct RendezvousReplyDecoder: Sendable {
    private var codeDecoder = ResultCodeDecoder()
    private var reader = FieldReader()
    private var buffer = ByteBuffer()
    private var ip: String?

    public enum Outcome: Sendable, Hashable {
        case peer(ip: String, port: Int)
        case refused(ResultCode)
    }

    public init() {}

    public mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> Outcome? {
        buffer.writeBuffer(&bytes)
        guard let code = try codeDecoder.decode(&buffer) else { return nil }
        guard code == .ok else { return .refused(code) }
        guard codeDecoder.skipTerminator(&buffer) else { return nil }
        if ip == nil {
            guard let field = try reader.readField(from: &buffer) else { return nil }
            ip = field
        }
        guard let text = try reader.readField(from: &buffer) else { return nil }
        guard let port = Int(text), (1...65535).contains(port) else { throw .invalidCount(text) }
        return .peer(ip: ip!, port: port)
    }

    /// `0·<ip>·<port>·` in the server's code encoding.
    public static func encode(ip: String, port: Int, encoder: ReplyEncoder, into buffer: inout ByteBuffer)
        throws(ProtocolError)
    {
        encoder.writeCode(.ok, into: &buffer)
        try buffer.writeFields([ip, String(port)])
    }
}
