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
/// one that never finishes; its loop's ``RequestDeadlines`` tells it when it passed) and gives
/// the connection's slot back to the ``ConnectionCounter`` when the connection ends. When the
/// server shuts down, a connection that has not sent a byte yet is closed at once; one with a
/// request under way is served. It is the only handler of the pipeline: with one short request
/// per connection, each extra handler and future is a noticeable share of the work.
///
/// What happens when is decided by a ``DirectoryConnectionStateMachine`` (no I/O, tested event
/// by event); this handler feeds it the channel's events and carries out its actions.
final class DirectoryConnectionHandler: ChannelInboundHandler, RemovableChannelHandler, RequestDeadlines.Waiting {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The request did not arrive whole within the deadline.
    struct TimedOut: Error, CustomStringConvertible {
        var timeout: TimeAmount
        var description: String { "request not complete after \(timeout.nanoseconds / 1_000_000) ms" }
    }

    let handler: DirectoryRequestHandler
    private let batcher: StoreBatcher
    let encoder: ReplyEncoder
    private let deadlines: RequestDeadlines
    private let limits: ConnectionLimits
    private let problems: ConnectionProblemReport
    let metrics: DirectoryMetrics
    let logger: Logger
    /// Where a `CONTROL` request's connection goes once admitted.
    let controls: ControlSessions?
    var machine: DirectoryConnectionStateMachine
    /// The socket's address (unmapped), or the PROXY header's once it has named one.
    private var clientIP: String
    /// Whether `clientIP` holds one of its slots in `limits`, to give back at the end.
    private var holdsAddressSlot: Bool
    /// The port the client connected from: the socket's, or behind a load balancer the PROXY
    /// header's (nil when the header named no client: the socket's port is the balancer's).
    var clientPort: Int?

    init(
        handler: DirectoryRequestHandler,
        batcher: StoreBatcher,
        encoder: ReplyEncoder,
        deadlines: RequestDeadlines,
        expectsProxyHeader: Bool = false,
        clientIP: String,
        holdsAddressSlot: Bool,
        limits: ConnectionLimits,
        problems: ConnectionProblemReport,
        metrics: DirectoryMetrics,
        controls: ControlSessions? = nil,
        logger: Logger
    ) {
        self.handler = handler
        self.batcher = batcher
        self.encoder = encoder
        self.deadlines = deadlines
        machine = DirectoryConnectionStateMachine(expectsProxyHeader: expectsProxyHeader)
        self.clientIP = clientIP
        self.holdsAddressSlot = holdsAddressSlot
        self.limits = limits
        self.problems = problems
        self.metrics = metrics
        self.controls = controls
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        deadlines.start(self, context: context)
    }

    func deadlinePassed(context: ChannelHandlerContext) {
        errorCaught(context: context, error: TimedOut(timeout: deadlines.timeout))
    }

    /// Runs once per connection, when its pipeline is torn down.
    func handlerRemoved(context: ChannelHandlerContext) {
        deadlines.stop(self)
        if holdsAddressSlot {
            limits.release(clientIP)
            holdsAddressSlot = false
        }
        limits.close()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        run(machine.bytesReceived(unwrapInboundIn(data)), context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            run(machine.quiesce(), context: context)
        } else if let event = event as? ChannelEvent, case .inputClosed = event {
            run(machine.inputClosed(), context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        run(machine.errorCaught(error), context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        machine.channelInactive()
        context.fireChannelInactive()
    }

    /// Carries out what the state machine decided.
    private func run(_ action: DirectoryConnectionStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .wait:
            break
        case .admit(let ip):
            let unmapped = SocketAddress.unmapped(ip)
            let admitted = limits.admit(unmapped)
            if admitted {
                clientIP = unmapped
                holdsAddressSlot = true
            } else {
                let key = ConnectionLimits.key(for: unmapped)
                problems.record(
                    .addressLimit, from: key,
                    detail:
                        """
                        closing connection from \(unmapped) (through the load balancer): \(limits.perAddress) \
                        connections from \(key) are open (--max-connections-per-address)
                        """
                )
            }
            run(machine.admitted(admitted), context: context)
        case .serve(let request, let proxied):
            clientPort = proxied?.port ?? (machine.expectsProxyHeader ? nil : context.channel.remoteAddress?.port)
            serve(request, peerIP: proxied.map { SocketAddress.unmapped($0.ip) } ?? clientIP, context: context)
        case .reject(let error, let rejection, let replyCode, let closeNow):
            let peer = clientIP
            switch rejection {
            case .emptyConnection: logger.debug("empty connection from \(peer)")
            case .endedBeforeRequest: logger.debug("connection from \(peer) ended before a request: \(error)")
            case .badRequest: problems.record(.badRequest, from: peer, detail: "bad request from \(peer): \(error)")
            case .timedOut: problems.record(.timeout, from: peer, detail: "bad request from \(peer): \(error)")
            }
            if let replyCode {
                var buffer = ByteBuffer()
                encoder.writeCode(replyCode, into: &buffer)
                context.write(wrapOutboundOut(buffer), promise: nil)
            }
            context.flush()
            // FIN after the reply, so that it is not destroyed by a reset; the deadline or the
            // client's own close ends the drain.
            context.close(mode: .output, promise: nil)
            if closeNow { context.close(promise: nil) }
        case .refuse(let error, let sawBytes):
            // `--proxy-protocol` and no valid header: nothing of it is read as a request (it may
            // come from someone bypassing the balancer). No byte at all: the balancer's health check.
            let peer = clientIP
            if sawBytes {
                problems.record(
                    .missingProxyHeader, from: peer,
                    detail: "closing connection from \(peer): \(error) (the server expects one: --proxy-protocol)")
            } else {
                logger.debug("empty connection from \(peer)")
            }
            context.close(promise: nil)
        case .close:
            context.close(promise: nil)
        }
    }

    private func serve(_ request: Request, peerIP: String, context: ChannelHandlerContext) {
        // The whole request is here: the deadline no longer applies.
        deadlines.stop(self)
        // A keyed request: its proof first (a MAC: the session's signature was checked when it
        // opened); one that does not hold is answered its status alone and changes nothing.
        var key: String?
        if request.proof != nil {
            switch controls?.keyed.verify(request) ?? .unknownSession {
            case .proven(let proven):
                key = proven
            case .unknownSession:
                answerKeyed(request, .unknownSession, context: context)
                return
            case .refused:
                problems.record(
                    .badRequest, from: peerIP,
                    detail:
                        """
                        keyed \(request.operation.rawValue) for \(ControlCharacters.escaped(request.user)) from \
                        \(peerIP) refused: its proof does not hold
                        """
                )
                answerKeyed(request, .refused, context: context)
                return
            }
        }
        let work: StoreWork
        switch handler.accept(request, peerIP: peerIP, key: key) {
        case .store(let storeWork):
            work = storeWork
        case .control(let controlRequest):
            serve(controlRequest, of: request, peerIP: peerIP, key: key, context: context)
            return
        }
        let start = NIODeadline.now()
        // The batcher runs the completion on this channel's event loop.
        batcher.submit(work) { reply, code in
            self.handler.served(request, code: code)
            self.metrics.served(request.operation, code: code, nanoseconds: (NIODeadline.now() - start).nanoseconds)
            guard self.machine.replyReady() else { return }
            let channel = context.channel
            var reply = reply
            if key != nil {
                // A keyed request's reply: its status (verified) first.
                var keyed = ByteBuffer()
                self.write(.verified, into: &keyed)
                keyed.writeBuffer(&reply)
                reply = keyed
            }
            context.writeAndFlush(self.wrapOutboundOut(reply)).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }

    /// A keyed request whose proof does not hold: its status alone (nothing was done), logged
    /// with the operation's "other" code.
    private func answerKeyed(_ request: Request, _ status: KeyedStatus, context: ChannelHandlerContext) {
        guard answered(request, code: request.operation.otherErrorCode, since: .now()) else { return }
        var buffer = ByteBuffer()
        write(status, into: &buffer)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    /// A keyed request's status, in the server's code encoding.
    func write(_ status: KeyedStatus, into buffer: inout ByteBuffer) {
        encoder.writeCode(ResultCode(rawValue: status.rawValue)!, into: &buffer)
    }
}
