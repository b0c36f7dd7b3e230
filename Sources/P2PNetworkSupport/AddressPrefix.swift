#if canImport(Glibc)
    import Glibc
#endif

/// An address or a network (`127.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`): what a list of
/// trusted senders is made of (`p2p-server --proxy-from`). IPv4 written as IPv4-mapped IPv6
/// (`::ffff:10.0.0.1`, as a dual-stack socket reports it) matches the IPv4 prefixes.
public struct AddressPrefix: Sendable, Hashable, CustomStringConvertible {
    /// The network's bytes (4 or 16), with the bits past the prefix cleared.
    private let bytes: [UInt8]
    private let bits: Int

    /// Loopback, IPv4 and IPv6: the default of `--proxy-from`.
    public static let loopback = [AddressPrefix("127.0.0.0/8")!, AddressPrefix("::1")!]

    /// Parses `ADDR` or `ADDR/PREFIX`; nil when it is neither.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = Self.parse(String(parts[0])) else { return nil }
        let width = address.count * 8
        var bits = width
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...width).contains(value), parts[1].allSatisfy(\.isNumber) else {
                return nil
            }
            bits = value
        }
        self.bits = bits
        self.bytes = Self.masked(address, bits)
    }

    /// Whether `address` (an IP address as text) is inside this network.
    public func contains(_ address: String) -> Bool {
        guard var parsed = Self.parse(address) else { return false }
        if parsed.count == 16, bytes.count == 4, parsed.prefix(12) == Self.mappedPrefix[...] {
            parsed = Array(parsed.suffix(4))
        }
        guard parsed.count == bytes.count else { return false }
        return Self.masked(parsed, bits) == bytes
    }

    /// Whether any of `prefixes` contains `address`.
    public static func any(_ prefixes: [AddressPrefix], contains address: String) -> Bool {
        prefixes.contains { $0.contains(address) }
    }

    public var description: String {
        var text = [UInt8](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        let written = bytes.withUnsafeBytes { raw in
            text.withUnsafeMutableBufferPointer { out in
                inet_ntop(
                    family, raw.baseAddress,
                    out.baseAddress.map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: CChar.self) },
                    socklen_t(out.count))
            }
        }
        let address = written == nil ? "?" : String(decoding: text.prefix { $0 != 0 }, as: UTF8.self)
        return bits == bytes.count * 8 ? address : "\(address)/\(bits)"
    }

    private static let mappedPrefix: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]

    private static func parse(_ text: String) -> [UInt8]? {
        let unbracketed = text.hasPrefix("[") && text.hasSuffix("]") ? String(text.dropFirst().dropLast()) : text
        var v4 = in_addr()
        if inet_pton(AF_INET, unbracketed, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, unbracketed, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }

    private static func masked(_ address: [UInt8], _ bits: Int) -> [UInt8] {
        address.enumerated().map { index, byte in
            let kept = max(0, min(8, bits - index * 8))
            return kept == 8 ? byte : kept == 0 ? 0 : byte & ~(UInt8(0xFF) >> kept)
        }
    }
}
