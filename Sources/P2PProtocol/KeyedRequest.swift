import NIOCore

/// Extension (docs/PROTOCOL.md, "Keys"): what proves that a request comes from the holder of
/// the user's key. It travels before the request itself:
///
/// ```
/// KEYED·<session>·<counter>·<mac>·CONNECT·<date-time>·alice·5001·
/// ```
///
/// `session` names a session opened with ``DirectoryOperation/identify`` (one signature
/// checked, once); `counter` grows with every request of the session (a request seen again is
/// refused); `mac` is HMAC-SHA256 under the session's key of ``KeyedRequest/authenticatedBytes``,
/// base64. Sent only to servers that announce ``ServerCapabilities/identity``.
public struct RequestProof: Sendable, Hashable {
    public var session: String
    public var counter: UInt64
    public var mac: String

    public init(session: String, counter: UInt64, mac: String) {
        self.session = session
        self.counter = counter
        self.mac = mac
    }
}

public enum KeyedRequest {
    /// The first field of a keyed request.
    public static let prefix = "KEYED"

    /// What the MAC covers: a label, the session, the counter and the request's own fields,
    /// each NUL-terminated (the request exactly as it is sent after the proof).
    public static func authenticatedBytes(session: String, counter: UInt64, request: Request) -> [UInt8] {
        var bytes = Array("p2p keyed request v1".utf8)
        bytes.append(0)
        for field in [session, String(counter)] + request.fields {
            bytes += field.utf8
            bytes.append(0)
        }
        return bytes
    }
}

/// The server's answer to a keyed request: this status first, then, when it is
/// ``verified``, the request's own reply.
public enum KeyedStatus: UInt8, Sendable, Hashable {
    /// The proof holds: the request's own reply follows.
    case verified = 0
    /// The server knows no such session (it restarted, or it is another server of a cluster):
    /// nothing was done; open a session and send the request again.
    case unknownSession = 1
    /// The MAC is wrong, the counter was seen already, or the request is for another user than
    /// the session's: nothing was done.
    case refused = 2
}

/// The reply to ``DirectoryOperation/identify``: `0·<session>·<agreement key>·`, or a code
/// alone: 1 the user is bound to another key, 2 the signature does not hold, 3 anything else
/// (a malformed key, too many sessions).
public enum IdentifyReply: Sendable, Hashable {
    case opened(session: String, agreementKey: String)
    case refused(ResultCode)

    public func encode(with encoder: ReplyEncoder, into buffer: inout ByteBuffer) throws(ProtocolError) {
        switch self {
        case .opened(let session, let agreementKey):
            encoder.writeCode(.ok, into: &buffer)
            try buffer.writeFields([session, agreementKey])
        case .refused(let code):
            encoder.writeCode(code, into: &buffer)
        }
    }
}

/// Decodes ``IdentifyReply`` from bytes as they arrive.
public struct IdentifyReplyDecoder: Sendable {
    private var code = ResultCodeDecoder()
    private var reader = FieldReader()
    private var buffer = ByteBuffer()
    private var fields: [String] = []

    public init() {}

    public mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> IdentifyReply? {
        buffer.writeBuffer(&bytes)
        guard let code = try code.decode(&buffer) else { return nil }
        guard code == .ok else { return .refused(code) }
        guard self.code.skipTerminator(&buffer) else { return nil }
        while fields.count < 2, let field = try reader.readField(from: &buffer) { fields.append(field) }
        guard fields.count == 2 else { return nil }
        return .opened(session: fields[0], agreementKey: fields[1])
    }

    public func finish() -> ProtocolError {
        .truncated(operation: DirectoryOperation.identify.rawValue, fieldsReceived: reader.fieldIndex)
    }
}

/// Decodes the reply to a keyed request: ``KeyedStatus``, then the request's own reply.
public struct KeyedReplyDecoder: Sendable {
    public enum Outcome: Sendable, Hashable {
        case verified(Reply)
        case unknownSession
        case refused
    }

    private var status = ResultCodeDecoder()
    private var inner: ReplyDecoder
    private var verified = false

    public init(operation: DirectoryOperation) {
        inner = ReplyDecoder(operation: operation)
    }

    public mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> Outcome? {
        if !verified {
            guard let code = try status.decode(&bytes) else { return nil }
            switch KeyedStatus(rawValue: code.rawValue) {
            case .verified?: break
            case .unknownSession?: return .unknownSession
            case .refused?, nil: return .refused
            }
            // A digit status's NUL may come in the next chunk: it is the status's, not the reply's.
            guard status.skipTerminator(&bytes) else { return nil }
            verified = true
        }
        return try inner.decode(&bytes).map { .verified($0) }
    }

    public func finish() -> ProtocolError { inner.finish() }
}
