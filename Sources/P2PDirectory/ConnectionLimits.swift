import CoreMetrics
import NIOCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The connection slots of the directory server: `total` at once for everybody, and at most
/// `perAddress` of them for one client address, so that one address cannot take every slot
/// and starve the others (a client that opens connections and sends nothing, say).
///
/// The total is taken at accept; the per-address share when the client's address is known:
/// at accept, or behind `--proxy-protocol` once the PROXY header has named it (the socket's
/// address is then the load balancer's, shared by every client).
///
/// An IPv6 client counts with its whole /64: one host is usually given a /64 (or more) to
/// pick addresses from, so counting single addresses would let it open as many connections
/// as it likes; an IPv4 address behind NAT is the same case, a household or a classroom.
final class ConnectionLimits: Sendable {
    let total: Int
    /// 0: no per-address limit.
    let perAddress: Int
    private let openCount = Atomic<Int>(0)
    private let byAddress = Mutex<[String: Int]>([:])
    private let gauge: Gauge

    init(total: Int, perAddress: Int, gauge: Gauge) {
        self.total = total
        self.perAddress = perAddress
        self.gauge = gauge
    }

    /// Takes one of the `total` slots; false (taking nothing) when all are in use.
    func open() -> Bool {
        let count = openCount.add(1, ordering: .relaxed).newValue
        if count > total {
            openCount.subtract(1, ordering: .relaxed)
            return false
        }
        gauge.record(count)
        return true
    }

    /// Gives back a slot taken by ``open()``.
    func close() {
        gauge.record(openCount.subtract(1, ordering: .relaxed).newValue)
    }

    /// Takes one of `ip`'s slots; false (taking nothing) when it has `perAddress` already.
    func admit(_ ip: String) -> Bool {
        guard perAddress > 0 else { return true }
        let key = Self.key(for: ip)
        return byAddress.withLock { counts in
            let count = counts[key, default: 0]
            guard count < perAddress else { return false }
            counts[key] = count + 1
            return true
        }
    }

    /// Gives back a slot taken by ``admit(_:)``.
    func release(_ ip: String) {
        guard perAddress > 0 else { return }
        let key = Self.key(for: ip)
        byAddress.withLock { counts in
            guard let count = counts[key] else { return }
            // Removed at 0, so that the table holds only addresses with connections open.
            counts[key] = count > 1 ? count - 1 : nil
        }
    }

    /// What `ip` is counted as: an IPv4 address itself, an IPv6 one its /64
    /// (`2001:db8:0:7::/64`).
    static func key(for ip: String) -> String {
        // Asked twice per connection: bytes, not Foundation's string search.
        guard ip.utf8.contains(UInt8(ascii: ":")) else { return ip }
        var address = in6_addr()
        guard inet_pton(AF_INET6, ip, &address) == 1 else { return ip }
        let bytes = withUnsafeBytes(of: &address) { Array($0.prefix(8)) }
        let groups = stride(from: 0, to: 8, by: 2).map {
            String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16)
        }
        return groups.joined(separator: ":") + "::/64"
    }
}

extension SocketAddress {
    /// The client's address as it is recorded and listed: an IPv4 client reaching a
    /// dual-stack IPv6 socket (`::ffff:a.b.c.d`) as plain IPv4, so that programs that parse
    /// the lists keep reading dotted quads.
    var clientIP: String? {
        guard let ip = ipAddress else { return nil }
        return Self.unmapped(ip)
    }

    /// `ip` without the IPv4-mapped IPv6 prefix, if it has one.
    static func unmapped(_ ip: String) -> String {
        // Asked for every connection: compared as bytes, without copies.
        let prefix = "::ffff:".utf8
        let utf8 = ip.utf8
        guard utf8.count > prefix.count,
            zip(utf8, prefix).allSatisfy({ byte, expected in
                // ASCII case-insensitive: `::FFFF:` too.
                byte == expected || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) && byte | 0x20 == expected
            })
        else { return ip }
        let rest = utf8.dropFirst(prefix.count)
        // Only the dotted form is an IPv4 address (`::ffff:1:2` is an ordinary IPv6 one).
        guard rest.contains(UInt8(ascii: ".")), !rest.contains(UInt8(ascii: ":")) else { return ip }
        return String(Substring(rest))
    }
}
