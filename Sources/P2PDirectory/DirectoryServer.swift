import Logging
import NIOCore
import NIOPosix
import P2PProtocol
import ServiceLifecycle
import Synchronization

/// Settings of the directory server's listener.
public struct DirectoryServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var codeEncoding: ResultCodeEncoding
    /// How long a connection may take to deliver its whole request.
    public var idleTimeout: TimeAmount
    /// Connections served at once; more are closed on accept.
    public var maxConnections: Int
    /// How long a graceful shutdown waits for requests in flight.
    public var shutdownGracePeriod: TimeAmount

    public init(
        host: String = "0.0.0.0",
        port: Int = 4242,
        codeEncoding: ResultCodeEncoding = .ascii,
        idleTimeout: TimeAmount = .seconds(5),
        maxConnections: Int = 1024,
        shutdownGracePeriod: TimeAmount = .seconds(10)
    ) {
        self.host = host
        self.port = port
        self.codeEncoding = codeEncoding
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.shutdownGracePeriod = shutdownGracePeriod
    }
}

/// The directory server's TCP listener: one request per connection (PROTOCOL.md section 1).
///
/// Connections are served by a ``DirectoryConnectionHandler`` on their event loop rather than
/// by a task per connection: with one short request per connection, a task and an async
/// stream per connection cost about as much CPU as all the rest of the work (measured with
/// `make bench`). Each connection's failure stays its own.
///
/// ``bind(configuration:handler:logger:eventLoopGroup:)`` opens the socket; ``run()`` serves
/// until graceful shutdown (or ``stop()``), then waits for the requests in flight.
public final class DirectoryServer: Service, Sendable {
    public let configuration: DirectoryServerConfiguration
    /// The address the listener is bound to (with the real port when 0 was asked for).
    public let localAddress: SocketAddress

    private let logger: Logger
    private let serverChannel: any Channel
    private let connections: ConnectionCounter

    private init(
        configuration: DirectoryServerConfiguration,
        logger: Logger,
        serverChannel: any Channel,
        connections: ConnectionCounter
    ) {
        self.configuration = configuration
        self.logger = logger
        self.serverChannel = serverChannel
        self.connections = connections
        self.localAddress = serverChannel.localAddress!
    }

    /// Opens the listening socket.
    public static func bind(
        configuration: DirectoryServerConfiguration,
        handler: DirectoryRequestHandler,
        logger: Logger,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> DirectoryServer {
        let connections = ConnectionCounter()
        let channel = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // A client may half-close after its request and still read the reply.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                guard connections.open(limit: configuration.maxConnections) else {
                    logger.warning(
                        "connection limit \(configuration.maxConnections) reached: closing connection from \(channel.remoteAddress?.description ?? "?")"
                    )
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in connections.close() }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        RequestDeadlineHandler(timeout: configuration.idleTimeout),
                        DirectoryConnectionHandler(
                            handler: handler,
                            encoder: ReplyEncoder(codeEncoding: configuration.codeEncoding),
                            logger: logger))
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        return DirectoryServer(
            configuration: configuration, logger: logger, serverChannel: channel, connections: connections)
    }

    /// Stops accepting; requests in flight are still answered.
    public func stop() {
        serverChannel.close(promise: nil)
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            try? await serverChannel.closeFuture.get()
        } onGracefulShutdown: {
            self.stop()
        }
        // Let the requests in flight be answered.
        let deadline = ContinuousClock.now + .nanoseconds(configuration.shutdownGracePeriod.nanoseconds)
        while connections.count > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// Counts open connections against the limit.
final class ConnectionCounter: Sendable {
    private let value = Atomic<Int>(0)

    /// Takes a slot; false (taking nothing) when all `limit` slots are in use.
    func open(limit: Int) -> Bool {
        if value.add(1, ordering: .relaxed).newValue > limit {
            value.subtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func close() {
        value.subtract(1, ordering: .relaxed)
    }

    var count: Int { value.load(ordering: .relaxed) }
}

/// Fails the connection's pipeline when its request has not arrived in time, which covers
/// both a client that sends nothing and one that never finishes.
final class RequestDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    struct TimedOut: Error, CustomStringConvertible {
        var timeout: TimeAmount
        var description: String { "request not complete after \(timeout.nanoseconds / 1_000_000) ms" }
    }

    private let timeout: TimeAmount
    private var task: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let timeout = self.timeout
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        task = context.eventLoop.scheduleTask(in: timeout) {
            loopBound.value.fireErrorCaught(TimedOut(timeout: timeout))
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        task?.cancel()
    }

    func channelInactive(context: ChannelHandlerContext) {
        task?.cancel()
        context.fireChannelInactive()
    }
}
