import NIOCore
import NIOPosix
import P2PNetworkSupport
import P2PProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One connection to an owner, as the downloading code uses it: the owner's bytes one read at a
/// time, and a writer for the request. Whether this side opened it (a direct connection) or the
/// owner did (a reversed one, ``Reversal``) makes no difference past this point.
struct PeerLink {
    /// The inbound iterator, handed from the task that accepted a reversed connection to the one
    /// downloading over it; only one of them uses it at a time.
    final class Inbound: @unchecked Sendable {
        var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
        /// Bytes read past what an earlier reader needed (after a relay's result code), given
        /// out first.
        var pending: ByteBuffer?

        init(_ iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator) {
            self.iterator = iterator
        }

        func next() async throws -> ByteBuffer? {
            if let bytes = pending {
                pending = nil
                if bytes.readableBytes > 0 { return bytes }
            }
            return try await iterator.next()
        }

        /// Reads the server's result code that opens a relayed connection; what follows it stays
        /// for the next reader. Nil when the connection ended first.
        func readCode() async throws -> ResultCode? {
            var decoder = ResultCodeDecoder()
            var code: ResultCode?
            while true {
                guard var chunk = try await next() else { return code }
                if code == nil { code = try decoder.decode(&chunk) }
                if code != nil, decoder.skipTerminator(&chunk) {
                    pending = chunk
                    return code
                }
            }
        }
    }

    let inbound: Inbound
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>

    /// The next bytes from the owner; nil once it has closed.
    func next() async throws -> ByteBuffer? {
        try await inbound.next()
    }

    func write(_ bytes: ByteBuffer) async throws {
        try await outbound.write(bytes)
    }
}

/// How a downloader gets a connection from an owner that cannot be reached (it is behind a NAT):
/// the directory server asks the owner, over the owner's control connection, to connect to this
/// client's listening port and present a one-time token (docs/PROTOCOL.md, "Reversed
/// connections"); this client's file server hands the connection that presents it to the
/// download waiting for it.
public final class Reversal: Sendable, Hashable {
    /// Asks the server for one reversed connection from the owner; returns the token the owner
    /// will present.
    let request: @Sendable () async throws(DownloadError) -> String
    let incoming: ReversedConnections

    init(request: @escaping @Sendable () async throws(DownloadError) -> String, incoming: ReversedConnections) {
        self.request = request
        self.incoming = incoming
    }

    public static func == (lhs: Reversal, rhs: Reversal) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// Reversed connections that owners opened to this client, matched with the downloads that
/// asked for them by token. Either may come first: the owner can connect before the server's
/// answer with the token reaches the download.
final class ReversedConnections: Sendable {
    /// A connection handed over: the link, and what ends its use (its accepting task then
    /// closes it).
    struct Handed: Sendable {
        var link: PeerLink.Inbound
        var outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
        var channel: any Channel
        var done: @Sendable () -> Void
    }

    private enum Slot {
        case waiting(CheckedContinuation<Handed?, Never>)
        case arrived(Handed)
    }

    private let slots = Mutex<[String: Slot]>([:])

    /// Connections kept at once for downloads that have not asked for them yet: anyone can
    /// connect and present a token, so the table is bounded (a download's own owner connects
    /// within a second or two of the server's request).
    static let maxParked = 16

    /// Called by the file server with a connection that presented `token`: false when it is not
    /// taken (the caller closes it): a connection for that token is here already, or too many
    /// are. One no download claims is dropped after `waitLimit`.
    func deliver(_ token: String, _ handed: Handed, waitLimit: Duration = .seconds(10)) -> Bool {
        enum Outcome {
            case handOver(CheckedContinuation<Handed?, Never>)
            case parked, refused
        }
        let outcome = slots.withLock { slots -> Outcome in
            switch slots[token] {
            case .waiting(let continuation)?:
                slots[token] = nil
                return .handOver(continuation)
            case .arrived?:
                return .refused
            case nil:
                let parked = slots.values.reduce(0) { count, slot in
                    if case .arrived = slot { return count + 1 }
                    return count
                }
                guard parked < Self.maxParked else { return .refused }
                slots[token] = .arrived(handed)
                return .parked
            }
        }
        switch outcome {
        case .handOver(let waiter):
            waiter.resume(returning: handed)
            return true
        case .refused:
            return false
        case .parked:
            break
        }
        // Kept a while for the download that will ask; then let go.
        Task {
            try? await Task.sleep(for: waitLimit)
            let unclaimed = slots.withLock { slots -> Handed? in
                guard case .arrived(let parked)? = slots[token], parked.channel === handed.channel else { return nil }
                slots[token] = nil
                return parked
            }
            unclaimed?.done()
        }
        return true
    }

    /// Lets go of every parked connection and every waiting download (the file server stops).
    func releaseAll() {
        let released = slots.withLock { slots -> [Slot] in
            defer { slots.removeAll() }
            return Array(slots.values)
        }
        for slot in released {
            switch slot {
            case .arrived(let handed): handed.done()
            case .waiting(let continuation): continuation.resume(returning: nil)
            }
        }
    }

    /// Connections parked now, waiting for a download to claim them.
    var parkedCount: Int {
        slots.withLock { slots in
            slots.values.reduce(0) { count, slot in
                if case .arrived = slot { return count + 1 }
                return count
            }
        }
    }

    /// The connection that presents `token`, waiting at most `timeout`; nil when none came.
    func claim(_ token: String, timeout: Duration) async -> Handed? {
        let handed = await withCheckedContinuation { (continuation: CheckedContinuation<Handed?, Never>) in
            let ready = slots.withLock { slots -> Handed? in
                if case .arrived(let handed)? = slots[token] {
                    slots[token] = nil
                    return handed
                }
                slots[token] = .waiting(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
        return handed
    }

    /// Gives up waiting for `token` (the claim's timeout).
    func abandon(_ token: String) {
        let waiter = slots.withLock { slots -> CheckedContinuation<Handed?, Never>? in
            guard case .waiting(let continuation)? = slots[token] else { return nil }
            slots[token] = nil
            return continuation
        }
        waiter?.resume(returning: nil)
    }
}

/// Opening a connection to a peer with the downloader's idle timeout.
enum PeerConnection {
    static func open(_ host: String, _ port: Int, idleTimeout: TimeAmount) async throws -> NIOAsyncChannel<
        ByteBuffer, ByteBuffer
    > {
        do {
            return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(5))
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandlers(
                            IdleStateHandler(readTimeout: idleTimeout), ReadTimeoutHandler())
                        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw DownloadError.unreachable("\(host):\(port): \(shortDescription(of: error))")
        }
    }

    /// Runs `body` over a connection to `source`: one this client opens, or, for an owner behind
    /// a NAT, one the owner opens at the server's request. Closed when `body` returns.
    static func withLink<Result: Sendable>(
        to source: PeerSource, idleTimeout: TimeAmount, _ body: (PeerLink) async throws -> Result
    ) async throws -> Result {
        if let punch = source.punch {
            return try await withPunched(punch, from: source, idleTimeout: idleTimeout, body)
        }
        guard let reversal = source.reversal else {
            let channel = try await open(source.host, source.port, idleTimeout: idleTimeout)
            return try await channel.executeThenClose { inbound, outbound in
                let link = PeerLink(inbound: PeerLink.Inbound(inbound.makeAsyncIterator()), outbound: outbound)
                try await secure(link, on: channel.channel, for: source)
                return try await body(link)
            }
        }
        let token = try await reversal.request()
        let claimed = await withTaskGroup(of: ReversedConnections.Handed?.self) { group in
            group.addTask { await reversal.incoming.claim(token, timeout: .seconds(10)) }
            group.addTask {
                try? await Task.sleep(for: .seconds(10))
                reversal.incoming.abandon(token)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        guard let handed = claimed else {
            throw DownloadError.unreachable("\(source.owner) did not connect back within 10 s")
        }
        defer { handed.done() }
        try await addReadTimeout(idleTimeout, to: handed.channel)
        let link = PeerLink(inbound: handed.link, outbound: handed.outbound)
        try await secure(link, on: handed.channel, for: source)
        return try await body(link)
    }

    /// `body` over a connection punched through both NATs, or, when punching fails and the
    /// server relays, one relayed through the server. The owner's first words on it must be
    /// the token (so a stray connection to the port is not taken for the owner).
    private static func withPunched<Result: Sendable>(
        _ punch: HolePunch, from source: PeerSource, idleTimeout: TimeAmount, _ body: (PeerLink) async throws -> Result
    ) async throws -> Result {
        var punched: (NIOAsyncChannel<ByteBuffer, ByteBuffer>, String)?
        if !punch.hasFailed {
            do {
                let token = try await punch.request()
                punched = (try await punch.punch(token), token)
            } catch {
                punch.failed(because: "\(error)")
                if punch.relay == nil { throw error }
            }
        }
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        let token: String
        let relayed: Bool
        if let punched {
            (channel, token) = punched
            relayed = false
        } else if let relay = punch.relay {
            (channel, token) = try await relay()
            relayed = true
        } else {
            throw DownloadError.unreachable(punch.failure ?? "no connection could be punched")
        }
        try await addReadTimeout(idleTimeout, to: channel.channel)
        return try await channel.executeThenClose { inbound, outbound in
            let link = PeerLink(inbound: PeerLink.Inbound(inbound.makeAsyncIterator()), outbound: outbound)
            if relayed {
                let code = try await link.inbound.readCode()
                guard code == .ok else {
                    throw DownloadError.unreachable(
                        code == 2
                            ? "\(source.owner) did not join the relay"
                            : "the directory server refused the relay (code \(code.map { "\($0)" } ?? "none"))")
                }
            }
            var decoder = FileRequestDecoder()
            var hello: FileRequest?
            while hello == nil, var chunk = try await link.next() {
                hello = try decoder.decode(&chunk)
                if hello != nil, chunk.readableBytes > 0 { link.inbound.pending = chunk }
            }
            guard let hello, PeerRequest(fileName: hello.fileName) == .reversed(token: token) else {
                throw DownloadError.unreachable("the connection to \(source.owner) did not present the token")
            }
            try await secure(link, on: channel.channel, for: source)
            return try await body(link)
        }
    }

    /// TLS on `link` when `source` is pinned to a key (whichever way the connection came); the
    /// requests that follow travel inside it.
    private static func secure(_ link: PeerLink, on channel: any Channel, for source: PeerSource) async throws {
        guard let pin = source.pin else { return }
        try await pin.tls.secure(link, on: channel, owner: source.owner, ownerKey: pin.key)
    }

    /// The downloader's idle timeout on a connection it did not open itself (a reversed,
    /// punched or relayed one), as ``open(_:_:idleTimeout:)`` gives the ones it opens.
    private static func addReadTimeout(_ idleTimeout: TimeAmount, to channel: any Channel) async throws {
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandlers(
                IdleStateHandler(readTimeout: idleTimeout), ReadTimeoutHandler(), position: .first)
        }.get()
    }
}
