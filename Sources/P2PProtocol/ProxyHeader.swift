import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// The header a TCP load balancer (HAProxy's `send-proxy` / `send-proxy-v2`) puts before the
/// client's bytes to say who the client is: the PROXY protocol, versions 1 (text) and 2
/// (binary), as HAProxy's `proxy-protocol.txt` describes them.
public struct ProxyHeader: Sendable, Hashable {
    /// The client's address and port as the load balancer saw them; nil for a connection the
    /// balancer made itself (a v2 LOCAL health check) or one it could not describe
    /// (`PROXY UNKNOWN`, an AF_UNSPEC or AF_UNIX v2 header): use the connection's own address.
    public var source: (ip: String, port: Int)? {
        get { sourceIP.map { ($0, sourcePort) } }
        set {
            sourceIP = newValue?.ip
            sourcePort = newValue?.port ?? 0
        }
    }
    private var sourceIP: String?
    private var sourcePort: Int = 0

    public init(source: (ip: String, port: Int)?) {
        self.source = source
    }
}

/// Why bytes are not a PROXY protocol header.
public enum ProxyHeaderError: Error, Equatable, CustomStringConvertible {
    /// The connection does not start with either version's signature.
    case missing
    /// A v1 line longer than 107 bytes, or a v2 block longer than allowed.
    case tooLong
    /// The signature is there but the rest is not valid.
    case malformed(String)

    public var description: String {
        switch self {
        case .missing: return "no PROXY protocol header"
        case .tooLong: return "PROXY protocol header too long"
        case .malformed(let reason): return "malformed PROXY protocol header: \(reason)"
        }
    }
}

/// Reads a PROXY protocol header from the start of a connection, as bytes arrive: nil until
/// the header is complete, then the header, with the buffer's reader index just after it
/// (what follows is the client's own bytes). Keeps no state between calls: the caller keeps
/// the bytes until the header is whole. No I/O.
public struct ProxyHeaderDecoder: Sendable {
    /// `PROXY ` : the start of a v1 header.
    static let v1Signature: [UInt8] = Array("PROXY ".utf8)
    /// The 12 bytes that start a v2 header.
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// A v1 header is at most 107 bytes, CRLF included.
    static let v1MaxLength = 107
    /// The largest v2 address block accepted: a UNIX one (216 bytes) plus room for TLVs.
    static let v2MaxLength = 1024

    public init() {}

    public func decode(_ buffer: inout ByteBuffer) throws(ProxyHeaderError) -> ProxyHeader? {
        let available = buffer.readableBytesView
        guard let first = available.first else { return nil }
        if first == Self.v1Signature[0] {
            return try decodeV1(&buffer)
        }
        if first == Self.v2Signature[0] {
            return try decodeV2(&buffer)
        }
        throw .missing
    }

    /// Whether `bytes` could still be the start of `signature`.
    private static func matchesSoFar(_ bytes: ByteBufferView, _ signature: [UInt8]) -> Bool {
        zip(bytes, signature).allSatisfy { $0 == $1 }
    }

    private func decodeV1(_ buffer: inout ByteBuffer) throws(ProxyHeaderError) -> ProxyHeader? {
        let bytes = buffer.readableBytesView
        guard Self.matchesSoFar(bytes, Self.v1Signature) else { throw .missing }
        guard let lineFeed = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            if bytes.count >= Self.v1MaxLength { throw .tooLong }
            return nil
        }
        let length = lineFeed - bytes.startIndex + 1
        guard length <= Self.v1MaxLength else { throw .tooLong }
        guard length >= 2, bytes[lineFeed - 1] == UInt8(ascii: "\r") else { throw .malformed("line not ended by CRLF") }
        let line = String(decoding: bytes[bytes.startIndex..<(lineFeed - 1)], as: UTF8.self)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 2, fields[0] == "PROXY" else { throw .malformed("no protocol") }
        let header: ProxyHeader
        switch fields[1] {
        case "UNKNOWN":
            // The balancer could not tell; the rest of the line is to be ignored.
            header = ProxyHeader(source: nil)
        case "TCP4", "TCP6":
            guard fields.count == 6 else { throw .malformed("\(fields.count) fields") }
            let family = fields[1] == "TCP4" ? AddressFamily.inet : .inet6
            guard let source = Self.canonicalAddress(fields[2], family), Self.canonicalAddress(fields[3], family) != nil
            else { throw .malformed("bad address") }
            guard let sourcePort = Self.port(fields[4]), Self.port(fields[5]) != nil else {
                throw .malformed("bad port")
            }
            header = ProxyHeader(source: (source, sourcePort))
        default:
            throw .malformed("unknown protocol \(fields[1].prefix(8))")
        }
        buffer.moveReaderIndex(forwardBy: length)
        return header
    }

    private func decodeV2(_ buffer: inout ByteBuffer) throws(ProxyHeaderError) -> ProxyHeader? {
        let bytes = buffer.readableBytesView
        guard Self.matchesSoFar(bytes, Self.v2Signature) else { throw .missing }
        guard bytes.count >= 16 else { return nil }
        let start = bytes.startIndex
        let versionCommand = bytes[start + 12]
        let familyTransport = bytes[start + 13]
        let length = Int(bytes[start + 14]) << 8 | Int(bytes[start + 15])
        guard versionCommand >> 4 == 2 else { throw .malformed("version \(versionCommand >> 4)") }
        guard length <= Self.v2MaxLength else { throw .tooLong }
        guard bytes.count >= 16 + length else { return nil }
        let block = Array(bytes[(start + 16)..<(start + 16 + length)])
        let header: ProxyHeader
        switch versionCommand & 0x0F {
        case 0:
            // LOCAL: the balancer's own connection (a health check).
            header = ProxyHeader(source: nil)
        case 1:
            switch familyTransport {
            case 0x11:  // TCP over IPv4
                guard block.count >= 12 else { throw .malformed("short IPv4 block") }
                let ip = block[0..<4].map(String.init).joined(separator: ".")
                header = ProxyHeader(source: (ip, Int(block[8]) << 8 | Int(block[9])))
            case 0x21:  // TCP over IPv6
                guard block.count >= 36 else { throw .malformed("short IPv6 block") }
                var address = in6_addr()
                withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: block[0..<16]) }
                guard let ip = Self.text(of: address) else { throw .malformed("bad IPv6 address") }
                header = ProxyHeader(source: (ip, Int(block[32]) << 8 | Int(block[33])))
            case 0x00, 0x31, 0x32:
                // Unspecified or UNIX: nothing usable; the connection's own address stands.
                header = ProxyHeader(source: nil)
            default:
                throw .malformed("family/transport 0x\(String(familyTransport, radix: 16))")
            }
        default:
            throw .malformed("command \(versionCommand & 0x0F)")
        }
        buffer.moveReaderIndex(forwardBy: 16 + length)
        return header
    }

    private enum AddressFamily { case inet, inet6 }

    /// The address in its usual text form, or nil when it is not one of `family`.
    private static func canonicalAddress(_ text: String, _ family: AddressFamily) -> String? {
        switch family {
        case .inet:
            var address = in_addr()
            guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
            return text
        case .inet6:
            var address = in6_addr()
            guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
            return Self.text(of: address)
        }
    }

    private static func text(of address: in6_addr) -> String? {
        var address = address
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil else { return nil }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A port as v1 writes it: 0-65535 in decimal, no sign, no leading zeros.
    private static func port(_ text: String) -> Int? {
        guard !text.isEmpty, text.count <= 5, text.allSatisfy(\.isASCII), text.allSatisfy(\.isNumber),
            text == "0" || !text.hasPrefix("0"), let value = Int(text), value <= 65535
        else { return nil }
        return value
    }
}
