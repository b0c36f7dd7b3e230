import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Listening on IPv4 and IPv6 at once, with one socket.
public enum DualStack {
    /// The address that means "every IPv6 and IPv4 address" (`--host ::`).
    public static let anyAddress = "::"

    /// Whether `host` is the IPv6 wildcard, which listens dual-stack (``configure(_:for:)``).
    public static func isWildcard(_ host: String) -> Bool {
        host == "::" || host == "[::]"
    }

    /// `host` as a bind or connect address: an IPv6 literal without the brackets a URL or a
    /// `host:port` needs around it.
    public static func unbracketed(_ host: String) -> String {
        host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    }

    /// `host:port`, with brackets around an IPv6 literal (`[::1]:4242`).
    public static func hostAndPort(_ host: String, _ port: Int) -> String {
        host.contains(":") && !host.hasPrefix("[") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Whether this machine can open IPv6 sockets at all (a kernel without IPv6, or a
    /// container with it turned off, cannot).
    public static let isAvailable: Bool = {
        #if canImport(Glibc)
            let descriptor = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        #else
            let descriptor = socket(AF_INET6, SOCK_STREAM, 0)
        #endif
        guard descriptor >= 0 else { return false }
        close(descriptor)
        return true
    }()

    /// For a listener on the IPv6 wildcard: accepts IPv4 too, whatever the system's default
    /// (`net.ipv6.bindv6only`). IPv4 clients then arrive as `::ffff:a.b.c.d`.
    public static func configure(_ bootstrap: ServerBootstrap, for host: String) -> ServerBootstrap {
        guard isWildcard(host) else { return bootstrap }
        return bootstrap.serverChannelOption(
            ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 0)
    }
}
