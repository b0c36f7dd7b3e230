import NIOCore

/// Our peers' extension of GET_FILE (docs/PROTOCOL.md, "Extension: file info and ranges"),
/// carried inside ordinary `GET_FILE` requests for reserved names, so that a peer that does not
/// know it sees only a well-formed request for a file it does not have and answers 1:
///
/// - `GET_FILE·/.p2p-reserved/v1/info/<name>·`: our peer answers `0·<size>·<sha256>·` (the size
///   in decimal, the SHA-256 in 64 lowercase hex digits), or 1 when it does not serve `name`.
/// - `GET_FILE·/.p2p-reserved/v1/range/<offset>-<length>/<name>·`: `0·` and exactly `length`
///   bytes of the file from `offset`, then it closes; 1 when it does not serve `name`, 2 when
///   the range is not inside the file.
///
/// A name too long to fit after the prefix in one field has no extended form: it is fetched
/// with plain GET_FILE.
public enum PeerRequest: Sendable, Hashable {
    /// The directory server's liveness check.
    case peerCheck
    /// A file's size and digest.
    case info(name: String)
    /// Part of a file.
    case range(offset: Int64, length: Int64, name: String)
    /// `GET_FILE·/.p2p-reserved/v1/reversed/<token>·`: sent by an owner that connected out to
    /// a downloader because the directory server asked it to (``ControlMessage/dial``). Not
    /// answered: the downloader that expects `token` now sends its own requests on this
    /// connection, and the owner serves them.
    case reversed(token: String)
    /// `GET_FILE·/.p2p-reserved/v1/tls·`: the downloader asks for TLS. Our owner with an identity
    /// answers `0·` and the two run a TLS 1.3 handshake on the same connection (the downloader
    /// as the TLS client), then the downloader's request follows inside it.
    case tls
    /// Any other reserved name (from a newer peer): answered 1.
    case unknownReserved

    static let infoPrefix = ReservedFileName.folder + "v1/info/"
    static let rangePrefix = ReservedFileName.folder + "v1/range/"
    static let reversedPrefix = ReservedFileName.folder + "v1/reversed/"
    static let tlsName = ReservedFileName.folder + "v1/tls"

    /// The reserved file name to send, nil when it would not fit in a field.
    public var fileName: String? {
        let name: String
        switch self {
        case .peerCheck: return ReservedFileName.peerCheck
        case .info(let file): name = Self.infoPrefix + file
        case .range(let offset, let length, let file): name = Self.rangePrefix + "\(offset)-\(length)/" + file
        case .reversed(let token): name = Self.reversedPrefix + token
        case .tls: return Self.tlsName
        case .unknownReserved: return nil
        }
        return name.utf8.count <= ProtocolLimits.maxFieldBytes ? name : nil
    }

    /// What a requested file name asks for: nil for an ordinary name.
    public init?(fileName: String) {
        guard ReservedFileName.isReserved(fileName) else { return nil }
        if fileName == ReservedFileName.peerCheck {
            self = .peerCheck
        } else if fileName == Self.tlsName {
            self = .tls
        } else if fileName.hasPrefix(Self.infoPrefix), fileName.utf8.count > Self.infoPrefix.utf8.count {
            self = .info(name: String(fileName.dropFirst(Self.infoPrefix.count)))
        } else if fileName.hasPrefix(Self.reversedPrefix), fileName.utf8.count > Self.reversedPrefix.utf8.count {
            self = .reversed(token: String(fileName.dropFirst(Self.reversedPrefix.count)))
        } else if fileName.hasPrefix(Self.rangePrefix) {
            let rest = fileName.dropFirst(Self.rangePrefix.count)
            guard let slash = rest.firstIndex(of: "/") else {
                self = .unknownReserved
                return
            }
            let bounds = rest[..<slash].split(separator: "-", omittingEmptySubsequences: false)
            let name = String(rest[rest.index(after: slash)...])
            // The end of the range must be a number too: a peer asking for 2^63-1 bytes from
            // offset 1 must get "other error", not an overflow.
            guard bounds.count == 2, let offset = Int64(bounds[0]), let length = Int64(bounds[1]), offset >= 0,
                length >= 0, !offset.addingReportingOverflow(length).overflow, !name.isEmpty
            else {
                self = .unknownReserved
                return
            }
            self = .range(offset: offset, length: length, name: name)
        } else {
            self = .unknownReserved
        }
    }
}

/// A file's size and SHA-256, as our peer tells them.
public struct FileInfo: Sendable, Hashable {
    public var size: Int64
    /// 64 lowercase hex digits.
    public var sha256: String

    public init(size: Int64, sha256: String) {
        self.size = size
        self.sha256 = sha256
    }

    /// `0·<size>·<sha256>·`.
    public func encode(into buffer: inout ByteBuffer) throws(ProtocolError) {
        ReplyEncoder().writeCode(FileReplyCode.ok, into: &buffer)
        try buffer.writeFields([String(size), sha256])
    }
}

/// Reads the answer to an info request: the info, or nil when the peer answered another code
/// (a peer that does not know the extension answers 1).
public struct FileInfoDecoder: Sendable {
    private var codeDecoder = ResultCodeDecoder()
    private var reader = FieldReader()
    private var buffer = ByteBuffer()
    private var size: Int64?

    public enum Outcome: Sendable, Hashable {
        case info(FileInfo)
        /// The peer answered this code: it does not serve the file, or does not know the extension.
        case declined(ResultCode)
    }

    public init() {}

    /// The outcome once known, nil while more bytes are needed.
    public mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> Outcome? {
        buffer.writeBuffer(&bytes)
        guard let code = try codeDecoder.decode(&buffer) else { return nil }
        guard code == .ok else { return .declined(code) }
        guard codeDecoder.skipTerminator(&buffer) else { return nil }
        if size == nil {
            guard let text = try reader.readField(from: &buffer) else { return nil }
            // At most 2^62: sizes are added to and rounded up to chunks by the downloader.
            guard let value = Int64(text), value >= 0, value <= 1 << 62 else { throw .invalidCount(text) }
            size = value
        }
        guard let digest = try reader.readField(from: &buffer) else { return nil }
        guard digest.utf8.count == 64, digest.utf8.allSatisfy({ isLowercaseHex($0) }) else {
            throw .invalidCount(digest)
        }
        return .info(FileInfo(size: size!, sha256: digest))
    }

    private func isLowercaseHex(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }
}
