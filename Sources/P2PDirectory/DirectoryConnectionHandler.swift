import Logging
import NIOCore
import NIOExtras
import P2PProtocol

/// Serves the one request of a directory connection: decodes it, has the
/// ``DirectoryRequestHandler`` log it and say what the store must do, hands that to its event
/// loop's ``StoreBatcher``, writes the reply and closes.
///
/// Bad input (PROTOCOL.md section 6) is logged; once the operation is known the reply is that
/// operation's "other" code. Before closing after bad input the handler sends FIN and
/// discards what the client still sends, so that the reply is not destroyed by a reset.
///
/// The handler also gives the request its deadline (covering a client that sends nothing and
/// one that never finishes) and gives the connection's slot back to the ``ConnectionCounter``
/// when the connection ends. When the server shuts down, a connection that has not sent a byte
/// yet is closed at once; one with a request under way is served. It is the only handler of the pipeline: with one short request
/// per connection, each extra handler and future is a noticeable share of the work.
final class DirectoryConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The request did not arrive whole within the deadline.
    struct TimedOut: Error, CustomStringConvertible {
        var timeout: TimeAmount
        var description: String { "request not complete after \(timeout.nanoseconds / 1_000_000) ms" }
    }

    private enum State {
        /// `--proxy-protocol`: the load balancer's header comes first (bytes so far).
        case awaitingProxyHeader(ByteBuffer)
        case reading
        case serving
        /// Reply sent after bad input: waiting for the client to close.
        case draining
        case closed
    }

    private let handler: DirectoryRequestHandler
    private let batcher: StoreBatcher
    private let encoder: ReplyEncoder
    private let requestTimeout: TimeAmount
    private let connections: ConnectionCounter
    private let metrics: DirectoryMetrics
    private let logger: Logger
    private var decoder = RequestDecoder()
    private var state = State.reading
    private var deadline: Scheduled<Void>?
    private var receivedBytes = false
    /// The client's address from the PROXY protocol header, standing for the connection's.
    private var proxiedIP: String?

    init(
        handler: DirectoryRequestHandler,
        batcher: StoreBatcher,
        encoder: ReplyEncoder,
        requestTimeout: TimeAmount,
        expectsProxyHeader: Bool = false,
        connections: ConnectionCounter,
        metrics: DirectoryMetrics,
        logger: Logger
    ) {
        self.handler = handler
        self.batcher = batcher
        self.encoder = encoder
        self.requestTimeout = requestTimeout
        if expectsProxyHeader { state = .awaitingProxyHeader(ByteBuffer()) }
        self.connections = connections
        self.metrics = metrics
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let timeout = requestTimeout
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            handler.errorCaught(context: context, error: TimedOut(timeout: timeout))
        }
    }

    /// Runs once per connection, when its pipeline is torn down.
    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        connections.close()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if case .awaitingProxyHeader(var header) = state {
            receivedBytes = true
            header.writeBuffer(&bytes)
            do {
                guard let proxy = try ProxyHeaderDecoder().decode(&header) else {
                    state = .awaitingProxyHeader(header)
                    return
                }
                proxiedIP = proxy.source?.ip
                state = .reading
                // Nothing of a request yet (a health check ends here).
                receivedBytes = false
                // What follows the header is the request.
                bytes = header
                guard bytes.readableBytes > 0 else { return }
            } catch {
                refuseWithoutProxyHeader(error, context: context)
                return
            }
        }
        guard case .reading = state else { return }
        receivedBytes = true
        do {
            guard let request = try decoder.decode(&bytes) else { return }
            serve(request, context: context)
        } catch {
            reject(error, context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Shutting down: a connection that has not started a request will not get to.
            switch state {
            case .reading, .awaitingProxyHeader: if !receivedBytes { close(context) }
            case .serving, .draining, .closed: break
            }
            return
        }
        guard let event = event as? ChannelEvent, case .inputClosed = event else {
            return context.fireUserInboundEventTriggered(event)
        }
        switch state {
        case .awaitingProxyHeader: refuseWithoutProxyHeader(ProxyHeaderError.missing, context: context)
        case .reading: reject(decoder.finish(), context: context)
        case .draining: close(context)
        case .serving, .closed: break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .awaitingProxyHeader: refuseWithoutProxyHeader(error, context: context)
        case .reading: reject(error, context: context)
        case .draining: close(context)
        case .serving, .closed: break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state = .closed
        context.fireChannelInactive()
    }

    private func serve(_ request: Request, context: ChannelHandlerContext) {
        state = .serving
        // The whole request is here: the deadline no longer applies.
        deadline?.cancel()
        deadline = nil
        let work = handler.accept(request, peerIP: self.proxiedIP ?? context.remoteAddress?.ipAddress ?? "0.0.0.0")
        let start = NIODeadline.now()
        // The batcher runs the completion on this channel's event loop.
        batcher.submit(work) { reply, code in
            self.handler.served(request, code: code)
            self.metrics.served(request.operation, code: code, nanoseconds: (NIODeadline.now() - start).nanoseconds)
            self.send(reply, context: context)
        }
    }

    private func send(_ reply: ByteBuffer, context: ChannelHandlerContext) {
        guard case .serving = state else { return }
        state = .closed
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    private func reject(_ error: any Error, context: ChannelHandlerContext) {
        let peer = context.remoteAddress?.ipAddress ?? "?"
        if case .truncated(nil, 0)? = error as? ProtocolError {
            // Connected and closed without a byte: a port probe, not a request.
            logger.debug("empty connection from \(peer)")
        } else if !receivedBytes, error is IOError {
            // Reset before a byte of a request (after a PROXY header, say): a load balancer's
            // health check, which HAProxy ends with a reset.
            logger.debug("connection from \(peer) ended before a request: \(error)")
        } else {
            logger.warning("bad request from \(peer): \(error)")
        }
        state = .draining
        if let operation = decoder.operation {
            var buffer = ByteBuffer()
            encoder.writeCode(operation.otherErrorCode, into: &buffer)
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        context.flush()
        // FIN after the reply; the deadline handler or the client's own close ends the drain.
        context.close(mode: .output, promise: nil)
        if error is TimedOut { close(context) }
    }

    /// `--proxy-protocol` and the connection did not start with a valid header: nothing of it
    /// is read as a request (it may come from someone bypassing the balancer); closed with a
    /// log line. A connection that closes without a byte is the balancer's health check.
    private func refuseWithoutProxyHeader(_ error: any Error, context: ChannelHandlerContext) {
        let peer = context.remoteAddress?.ipAddress ?? "?"
        if receivedBytes {
            logger.warning("closing connection from \(peer): \(error) (the server expects one: --proxy-protocol)")
        } else {
            logger.debug("empty connection from \(peer)")
        }
        close(context)
    }

    private func close(_ context: ChannelHandlerContext) {
        if case .closed = state { return }
        state = .closed
        context.close(promise: nil)
    }
}
