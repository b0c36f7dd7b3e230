import NIOCore
import NIOPosix
import P2PNetworkSupport
import P2PProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP connection punched through two NATs (docs/PROTOCOL.md, "Hole punching"), for an owner
/// and a downloader that are both behind one: each side opens a socket on a port of its own
/// and shows it to the directory server (`RENDEZVOUS`), which sees the public address and port
/// the NAT gave it and, once both sides have come, tells each the other's, at the same moment;
/// then both connect from that same port to the other's public address at once. Each NAT has
/// just seen its side's connection go out to the other, so it lets the other's in: the two
/// SYNs cross and the connection opens (TCP's simultaneous open). Attempts are repeated for a
/// few seconds, since the first SYN to arrive may meet a NAT that has not yet seen its own
/// side's. A NAT that gives every connection a new port (symmetric) defeats it: the port the
/// server saw is not the one the punch comes from.
public final class HolePunch: Sendable, Hashable {
    /// Asks the server for a punch with the owner; its token.
    let request: @Sendable () async throws(DownloadError) -> String
    /// Shows the server a socket's port for the punch `token` and returns the connection punched
    /// from it.
    let punch: @Sendable (_ token: String) async throws(DownloadError) -> NIOAsyncChannel<ByteBuffer, ByteBuffer>
    /// When the server relays: a relayed connection to the owner and its token (its result code
    /// not read yet).
    let relay: (@Sendable () async throws(DownloadError) -> (NIOAsyncChannel<ByteBuffer, ByteBuffer>, String))?
    /// Why punching failed, once it has: later connections to the owner go straight to the relay.
    private let failureReason = Mutex<String?>(nil)
    private let onFailure: @Sendable (String) -> Void

    init(
        request: @escaping @Sendable () async throws(DownloadError) -> String,
        punch: @escaping @Sendable (String) async throws(DownloadError) -> NIOAsyncChannel<ByteBuffer, ByteBuffer>,
        relay: (@Sendable () async throws(DownloadError) -> (NIOAsyncChannel<ByteBuffer, ByteBuffer>, String))? = nil,
        failedBefore: String? = nil,
        onFailure: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        failureReason.withLock { $0 = failedBefore }
        self.request = request
        self.punch = punch
        self.relay = relay
        self.onFailure = onFailure
    }

    var hasFailed: Bool { failureReason.withLock { $0 != nil } }
    var failure: String? { failureReason.withLock { $0 } }

    /// Records that punching failed (said once, through `onFailure`).
    func failed(because reason: String) {
        let first = failureReason.withLock { failure -> Bool in
            defer { if failure == nil { failure = reason } }
            return failure == nil
        }
        if first { onFailure(reason) }
    }

    public static func == (lhs: HolePunch, rhs: HolePunch) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }

    /// How long both sides keep trying to connect after the rendezvous.
    static let attemptsFor: Duration = .seconds(8)

    /// One side of the punch `token`: the rendezvous with the directory server as `user`, then
    /// the connection to the other side from the same port.
    static func connect(
        directory: DirectoryClient, user: String, token: String, dateTime: String
    ) async throws(DownloadError) -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        let anyAddress = directory.host.contains(":") ? "::" : "0.0.0.0"
        let local: SocketAddress
        do {
            local = try SocketAddress(ipAddress: anyAddress, port: 0)
        } catch {
            throw .unreachable("\(error)")
        }
        let (peer, port) = try await rendezvous(
            directory: directory, from: local,
            request: Request(dateTime: dateTime, command: .rendezvous(user: user, token: token)))
        let deadline = ContinuousClock.now + attemptsFor
        var lastError = "no attempt"
        while ContinuousClock.now < deadline {
            do {
                return try await bootstrap(from: try SocketAddress(ipAddress: anyAddress, port: port))
                    .connectTimeout(.seconds(3))
                    .connect(host: peer.ip, port: peer.port) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                    }
            } catch {
                lastError = shortDescription(of: error)
                // Refused (a NAT that answers unknown connections with a reset): again soon.
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        throw .unreachable("no connection punched to \(peer.ip):\(peer.port) in \(attemptsFor): \(lastError)")
    }

    /// A client bootstrap bound to `local`, with the port reusable: the punch binds the port the
    /// rendezvous used, maybe while that connection is still closing.
    private static func bootstrap(from local: SocketAddress) -> ClientBootstrap {
        ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(ChannelOptions.socket(SocketOptionLevel(SOL_SOCKET), SO_REUSEPORT), value: 1)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(to: local)
    }

    /// `RENDEZVOUS` from a fresh port: the other side's public address, and the local port used.
    private static func rendezvous(
        directory: DirectoryClient, from local: SocketAddress, request: Request
    ) async throws(DownloadError) -> (peer: (ip: String, port: Int), localPort: Int) {
        var bytes = ByteBuffer()
        do {
            try RequestEncoder.encode(request, into: &bytes)
        } catch {
            throw .unreachable("\(error)")
        }
        let sent = bytes
        do {
            let channel = try await bootstrap(from: local)
                .connectTimeout(.seconds(3))
                .connect(host: directory.host, port: directory.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            let localPort = channel.channel.localAddress?.port ?? 0
            let outcome = try await channel.executeThenClose { inbound, outbound -> RendezvousReplyDecoder.Outcome? in
                try await outbound.write(sent)
                var decoder = RendezvousReplyDecoder()
                for try await var chunk in inbound {
                    if let outcome = try decoder.decode(&chunk) { return outcome }
                }
                return nil
            }
            switch outcome {
            case .peer(let ip, let port)?:
                return ((ip, port), localPort)
            case .refused(let code)?:
                throw DownloadError.unreachable(
                    code == 2
                        ? "the other side of the hole punch did not show up at the directory server"
                        : "the directory server refused the hole punch (code \(code))")
            case nil:
                throw DownloadError.unreachable("the directory server closed the rendezvous without an answer")
            }
        } catch let error as DownloadError {
            throw error
        } catch {
            throw .unreachable("rendezvous with the directory server: \(shortDescription(of: error))")
        }
    }
}

/// A connection relayed through the directory server (docs/PROTOCOL.md, "Relay"): a `RELAY`
/// request with the relay's token on a new connection to the server, which answers 0 once the
/// other side has come and then passes the bytes between the two.
enum RelayConnection {
    static func open(
        directory: DirectoryClient, user: String, token: String, dateTime: String
    ) async throws(DownloadError) -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        var request = ByteBuffer()
        do {
            try RequestEncoder.encode(
                Request(dateTime: dateTime, command: .relay(user: user, token: token)), into: &request)
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(3))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: directory.host, port: directory.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            try await channel.channel.writeAndFlush(request)
            return channel
        } catch {
            throw .unreachable("relay through the directory server: \(shortDescription(of: error))")
        }
    }
}
