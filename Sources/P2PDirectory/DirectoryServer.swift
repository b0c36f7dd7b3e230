import CoreMetrics
import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import P2PNetworkSupport
import P2PProtocol
import ServiceLifecycle
import Synchronization

/// Settings of the directory server's listener.
public struct DirectoryServerConfiguration: Sendable {
    /// The address to listen on: an IPv4 or IPv6 one, `0.0.0.0` for every IPv4 address, `::`
    /// for every IPv6 and IPv4 address (one dual-stack socket; an IPv4 client is recorded as
    /// plain IPv4).
    public var host: String
    public var port: Int
    public var codeEncoding: ResultCodeEncoding
    /// How long a connection may take to deliver its whole request.
    public var idleTimeout: TimeAmount
    /// Connections served at once; more are closed on accept.
    public var maxConnections: Int
    /// Connections served at once from one client address (0: no limit); more are closed on
    /// accept (behind `proxyProtocol`, once the PROXY header has named the address).
    public var maxConnectionsPerAddress: Int
    /// How long a connection refused at accept (either limit) is kept, unread, before it is
    /// closed: a client that reopens every connection the moment it is closed would otherwise
    /// keep the listen queue full, and everybody else's connections wait behind its own. At
    /// most `maxConnections` are kept so; beyond them refusals close at once.
    public var refusalDelay: TimeAmount
    /// How often refused connections, bad requests and timeouts are summed up in the log (the
    /// first of each kind in an interval is logged at once, the rest only counted).
    public var problemReportInterval: TimeAmount
    /// How long a graceful shutdown waits for requests in flight.
    public var shutdownGracePeriod: TimeAmount
    /// Whether a connected user can be changed only from the address it connected from.
    public var ownerCheck: Bool
    /// Whether every connection starts with a PROXY protocol header (v1 or v2) from a load
    /// balancer, whose client address then stands for the connection's (CONNECT records it,
    /// the owner check compares it). A connection without a valid one is closed.
    public var proxyProtocol: Bool
    /// With `proxyProtocol`, where a PROXY header is believed from (the load balancers):
    /// a connection from any other address is closed unread, so that nobody reaching the port
    /// directly can claim another client's address.
    public var trustedProxies: [AddressPrefix]

    public init(
        host: String = "0.0.0.0",
        port: Int = 4242,
        codeEncoding: ResultCodeEncoding = .ascii,
        idleTimeout: TimeAmount = .seconds(5),
        maxConnections: Int = 1024,
        maxConnectionsPerAddress: Int = 256,
        problemReportInterval: TimeAmount = .seconds(10),
        refusalDelay: TimeAmount = .seconds(1),
        shutdownGracePeriod: TimeAmount = .seconds(10),
        ownerCheck: Bool = true,
        proxyProtocol: Bool = false,
        trustedProxies: [AddressPrefix] = AddressPrefix.loopback
    ) {
        self.host = host
        self.port = port
        self.codeEncoding = codeEncoding
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.maxConnectionsPerAddress = maxConnectionsPerAddress
        self.problemReportInterval = problemReportInterval
        self.refusalDelay = refusalDelay
        self.shutdownGracePeriod = shutdownGracePeriod
        self.ownerCheck = ownerCheck
        self.proxyProtocol = proxyProtocol
        self.trustedProxies = trustedProxies
    }
}

/// The directory server's TCP listener: one request per connection (PROTOCOL.md section 1).
///
/// Connections are served by a ``DirectoryConnectionHandler`` on their event loop rather than
/// by a task per connection: with one short request per connection, a task and an async
/// stream per connection cost about as much CPU as all the rest of the work (measured with
/// `make bench`). Each connection's failure stays its own. Each event loop has a
/// ``StoreBatcher`` that hands the store that loop's requests a pass at a time.
///
/// ``bind(configuration:handler:store:logger:eventLoopGroup:)`` opens the socket; ``run()``
/// serves until graceful shutdown (or ``stop()``), then waits, at most
/// ``DirectoryServerConfiguration/shutdownGracePeriod``, for the connections still open
/// (NIOExtras' `ServerQuiescingHelper` tells each one to finish and reports when all closed).
public final class DirectoryServer: Service, Sendable {
    public let configuration: DirectoryServerConfiguration
    /// The address the listener is bound to (with the real port when 0 was asked for).
    public let localAddress: SocketAddress

    private let logger: Logger
    private let serverChannel: any Channel
    private let quiescing: ServerQuiescingHelper
    private let problems: ConnectionProblemReport
    private let problemReports: RepeatedTask
    /// Completed once the listener is closed and every connection has ended.
    private let allClosed: EventLoopPromise<Void>
    private let stopping = Atomic<Bool>(false)

    private init(
        configuration: DirectoryServerConfiguration,
        logger: Logger,
        serverChannel: any Channel,
        quiescing: ServerQuiescingHelper,
        problems: ConnectionProblemReport
    ) {
        self.configuration = configuration
        self.logger = logger
        self.serverChannel = serverChannel
        self.quiescing = quiescing
        self.problems = problems
        let interval = configuration.problemReportInterval
        problemReports = serverChannel.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            problems.flush()
        }
        self.allClosed = serverChannel.eventLoop.makePromise()
        self.localAddress = serverChannel.localAddress!
    }

    /// Opens the listening socket. Requests are accepted by `handler` and served by `store`.
    public static func bind(
        configuration: DirectoryServerConfiguration,
        handler: DirectoryRequestHandler,
        store: any DirectoryStore,
        metrics: DirectoryMetrics = .none,
        controls: ControlSessions? = nil,
        logger: Logger,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> DirectoryServer {
        let limits = ConnectionLimits(
            total: configuration.maxConnections, perAddress: configuration.maxConnectionsPerAddress,
            gauge: metrics.openConnections)
        let problems = ConnectionProblemReport(
            logger: logger, interval: configuration.problemReportInterval, metrics: metrics.factory)
        let refusals = RefusedConnections(delay: configuration.refusalDelay, limit: configuration.maxConnections)
        let quiescing = ServerQuiescingHelper(group: eventLoopGroup)
        // Each event loop's own batcher and request deadlines (they are confined to it).
        var perLoop: [ObjectIdentifier: (batcher: StoreBatcher, deadlines: RequestDeadlines)] = [:]
        for loop in eventLoopGroup.makeIterator() {
            perLoop[ObjectIdentifier(loop)] = (
                StoreBatcher(
                    store: store, eventLoop: loop, encoder: ReplyEncoder(codeEncoding: configuration.codeEncoding),
                    logger: logger),
                RequestDeadlines(timeout: configuration.idleTimeout, eventLoop: loop)
            )
        }
        let ofLoop = perLoop
        let channel = try await DualStack.configure(ServerBootstrap(group: eventLoopGroup), for: configuration.host)
            .serverChannelOption(.backlog, value: 1024)
            // Accept up to 16 connections per pass of the event loop instead of NIO's 4: with
            // one request per connection, new connections are most of the work, and their
            // requests then reach the store together (in `make bench` at 64 clients, A/B:
            // about +20% REGISTER throughput and 2 ms less p99).
            .serverChannelOption(.maxMessagesPerRead, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            // Child options are set in the initializer, synchronously: the bootstrap's
            // `childChannelOption` applies them through a chain of futures per connection,
            // which showed up in profiles of one-request connections. (TCP_NODELAY is on the
            // listening socket by default, and accepted sockets inherit it.)
            .childChannelInitializer { channel in
                // A connection reset before it got here has no address left: nobody to serve
                // or to blame (HAProxy's health checks connect and reset at once).
                guard let clientIP = channel.remoteAddress?.clientIP else {
                    return channel.eventLoop.makeFailedFuture(RefusedConnections.Refused())
                }
                guard limits.open() else {
                    problems.record(
                        .connectionLimit, from: clientIP,
                        detail:
                            """
                            closing connection from \(clientIP): \(configuration.maxConnections) connections are \
                            open (--max-connections)
                            """
                    )
                    return refusals.refuse(channel)
                }
                if configuration.proxyProtocol, !AddressPrefix.any(configuration.trustedProxies, contains: clientIP) {
                    limits.close()
                    problems.record(
                        .untrustedProxy, from: clientIP,
                        detail:
                            """
                            closing connection from \(clientIP): not a load balancer named by --proxy-from, so \
                            its PROXY header is not believed
                            """
                    )
                    return channel.eventLoop.makeFailedFuture(RefusedConnections.Refused())
                }
                // Behind the balancer the socket's address is the balancer's: the client's
                // share is taken once its PROXY header is read.
                let holdsAddressSlot = !configuration.proxyProtocol
                if holdsAddressSlot, !limits.admit(clientIP) {
                    limits.close()
                    let key = ConnectionLimits.key(for: clientIP)
                    problems.record(
                        .addressLimit, from: key,
                        detail:
                            """
                            closing connection from \(clientIP): \(configuration.maxConnectionsPerAddress) \
                            connections from \(key) are open (--max-connections-per-address)
                            """
                    )
                    return refusals.refuse(channel)
                }
                return channel.eventLoop.makeCompletedFuture {
                    // The handler gives the slot back when it is removed, which happens when the
                    // channel closes, also if the initializer fails after this point.
                    do {
                        guard let (batcher, deadlines) = ofLoop[ObjectIdentifier(channel.eventLoop)] else {
                            throw ChannelError.inappropriateOperationForState
                        }
                        try channel.pipeline.syncOperations.addHandler(
                            DirectoryConnectionHandler(
                                handler: handler,
                                batcher: batcher,
                                encoder: ReplyEncoder(codeEncoding: configuration.codeEncoding),
                                deadlines: deadlines,
                                expectsProxyHeader: configuration.proxyProtocol,
                                clientIP: clientIP,
                                holdsAddressSlot: holdsAddressSlot,
                                limits: limits,
                                problems: problems,
                                metrics: metrics,
                                controls: controls,
                                logger: logger))
                    } catch {
                        if holdsAddressSlot { limits.release(clientIP) }
                        limits.close()
                        throw error
                    }
                    // A client may half-close after its request and still read the reply.
                    // (Nothing is read before the initializer returns.)
                    try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                }
            }
            .bind(host: DualStack.unbracketed(configuration.host), port: configuration.port)
            .get()
        return DirectoryServer(
            configuration: configuration, logger: logger, serverChannel: channel, quiescing: quiescing,
            problems: problems)
    }

    /// Stops accepting and asks the open connections to finish; requests in flight are still
    /// answered.
    public func stop() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        quiescing.initiateShutdown(promise: allClosed)
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            try? await serverChannel.closeFuture.get()
        } onGracefulShutdown: {
            self.stop()
        }
        // The listener can also close without stop() (an error): quiesce in any case.
        stop()
        let grace = configuration.shutdownGracePeriod
        let loop = serverChannel.eventLoop
        let allClosed = self.allClosed.futureResult
        let finished = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let once = FirstOfTwo()
            allClosed.whenComplete { _ in
                if once.claim() { continuation.resume(returning: true) }
            }
            loop.scheduleTask(in: grace) {
                if once.claim() { continuation.resume(returning: false) }
            }
        }
        if !finished {
            logger.warning("connections still open after the \(grace.nanoseconds / 1_000_000_000) s grace period")
        }
        problemReports.cancel()
        problems.flush()
    }
}

/// Connections refused at accept, each kept unread (not even registered with the event loop)
/// for `delay` and then closed; more than `limit` at once are closed at once.
final class RefusedConnections: Sendable {
    /// Why the channel's initializer failed: the connection was refused (no log line:
    /// ``ConnectionProblemReport`` has counted it already).
    struct Refused: Error {}

    private let delay: TimeAmount
    private let limit: Int
    private let held = Atomic<Int>(0)

    init(delay: TimeAmount, limit: Int) {
        self.delay = delay
        self.limit = limit
    }

    /// What the child channel initializer returns for a refused connection: a future that
    /// fails after the delay (the bootstrap then closes the channel without registering it).
    func refuse(_ channel: any Channel) -> EventLoopFuture<Void> {
        guard delay > .zero, held.add(1, ordering: .relaxed).newValue <= limit else {
            if delay > .zero { held.subtract(1, ordering: .relaxed) }
            return channel.eventLoop.makeFailedFuture(Refused())
        }
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.eventLoop.scheduleTask(in: delay) {
            self.held.subtract(1, ordering: .relaxed)
            promise.fail(Refused())
        }
        return promise.futureResult
    }
}

/// Lets only the first of two racing callbacks through.
private final class FirstOfTwo: Sendable {
    private let taken = Atomic<Bool>(false)

    func claim() -> Bool {
        !taken.exchange(true, ordering: .relaxed)
    }
}
