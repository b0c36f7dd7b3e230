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

    public init(
        host: String = "0.0.0.0",
        port: Int = 4242,
        codeEncoding: ResultCodeEncoding = .ascii,
        idleTimeout: TimeAmount = .seconds(5),
        maxConnections: Int = 1024
    ) {
        self.host = host
        self.port = port
        self.codeEncoding = codeEncoding
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
    }
}

/// The directory server's TCP listener: one request per connection (PROTOCOL.md section 1).
///
/// Each accepted connection runs in its own child task and catches its own errors, so a bad
/// client never affects the others. ``bind(configuration:handler:logger:)`` opens the socket;
/// ``run()`` serves until graceful shutdown (or ``stop()``), then waits for the requests in
/// flight to be answered.
public final class DirectoryServer: Service, Sendable {
    public let configuration: DirectoryServerConfiguration
    /// The address the listener is bound to (with the real port when 0 was asked for).
    public let localAddress: SocketAddress

    private let handler: DirectoryRequestHandler
    private let logger: Logger
    private let serverChannel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    private let activeConnections = Atomic<Int>(0)

    private init(
        configuration: DirectoryServerConfiguration,
        handler: DirectoryRequestHandler,
        logger: Logger,
        serverChannel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    ) {
        self.configuration = configuration
        self.handler = handler
        self.logger = logger
        self.serverChannel = serverChannel
        self.localAddress = serverChannel.channel.localAddress!
    }

    /// Opens the listening socket.
    public static func bind(
        configuration: DirectoryServerConfiguration,
        handler: DirectoryRequestHandler,
        logger: Logger,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> DirectoryServer {
        let idleTimeout = configuration.idleTimeout
        let channel = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // A client may half-close after its request and still read the reply.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RequestDeadlineHandler(timeout: idleTimeout))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true))
                }
            }
        return DirectoryServer(configuration: configuration, handler: handler, logger: logger, serverChannel: channel)
    }

    /// Stops accepting; requests in flight are still answered.
    public func stop() {
        serverChannel.channel.close(promise: nil)
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await serverChannel.executeThenClose { inbound in
                    for try await connection in inbound {
                        let active = activeConnections.add(1, ordering: .relaxed).newValue
                        if active > configuration.maxConnections {
                            activeConnections.subtract(1, ordering: .relaxed)
                            logger.warning(
                                "connection limit \(configuration.maxConnections) reached: closing connection",
                                metadata: ["peer": "\(connection.channel.remoteAddress?.description ?? "?")"])
                            try? await connection.channel.close()
                            continue
                        }
                        group.addTask {
                            await self.serve(connection)
                            self.activeConnections.subtract(1, ordering: .relaxed)
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            self.stop()
        }
    }

    /// Reads one request, answers it and closes. Never throws: a connection's failure is its own.
    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        let peer = connection.channel.remoteAddress
        let peerIP = peer?.ipAddress ?? "0.0.0.0"
        let encoder = ReplyEncoder(codeEncoding: configuration.codeEncoding)
        do {
            try await connection.executeThenClose { inbound, outbound in
                var chunks = inbound.makeAsyncIterator()
                var decoder = RequestDecoder()
                var request: Request?
                do {
                    while request == nil, var chunk = try await chunks.next() {
                        request = try decoder.decode(&chunk)
                    }
                    guard request != nil else { throw decoder.finish() }
                } catch {
                    logger.warning("bad request from \(peerIP): \(error)")
                    // A reply is possible only once we know which operation's "other" code to use.
                    if let operation = decoder.operation {
                        var buffer = ByteBuffer()
                        encoder.writeCode(operation.otherErrorCode, into: &buffer)
                        try? await outbound.write(buffer)
                    }
                    // Closing with unread input would reset the connection and could destroy the
                    // reply before the client reads it: send FIN, then discard input until the
                    // client closes or the request deadline passes.
                    outbound.finish()
                    while (try? await chunks.next()) != nil {}
                    return
                }
                let reply = await handler.handle(request!, peerIP: peerIP)
                var buffer = ByteBuffer()
                do {
                    try encoder.encode(reply, into: &buffer)
                } catch {
                    // A stored value that no longer fits the protocol; answer "other" rather than cut it.
                    logger.error("cannot encode reply to \(request!.operation.rawValue): \(error)")
                    buffer.clear()
                    encoder.writeCode(request!.operation.otherErrorCode, into: &buffer)
                }
                try await outbound.write(buffer)
            }
        } catch {
            logger.debug("connection from \(peer?.description ?? "?") ended: \(error)")
        }
    }
}

/// Fails the connection's inbound stream when its request has not arrived in time, which
/// covers both a client that sends nothing and one that never finishes.
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
