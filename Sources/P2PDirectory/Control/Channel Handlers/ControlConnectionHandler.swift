import Logging
import NIOCore
import P2PProtocol

/// Serves one control connection after its `CONTROL` was answered 0 (it takes the place of the
/// ``DirectoryConnectionHandler`` in the pipeline): sends `PING` every keepalive interval (the
/// client answers each), closes the connection when the client has sent nothing for three, answers `WHO`,
/// `KEY`, `REVERSE`, `PUNCH` and `RELAY`, and tells ``ControlSessions`` when the connection ends,
/// which takes the user offline. What to do is decided by its ``ControlConnectionStateMachine``;
/// the handler carries it out.
final class ControlConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let sessions: ControlSessions
    private let user: String
    private let ip: String
    private let port: String
    private let logger: Logger
    private var decoder = ControlMessageDecoder()
    private var machine: ControlConnectionStateMachine
    private var id: Int?
    private var keepalive: RepeatedTask?

    init(sessions: ControlSessions, user: String, ip: String, port: String, logger: Logger) {
        self.sessions = sessions
        self.user = user
        self.ip = ip
        self.port = port
        self.logger = logger
        let settings = sessions.settings
        machine = ControlConnectionStateMachine(
            limits: .init(requestBurst: settings.requestBurst, requestsPerSecond: settings.requestsPerSecond),
            keepalive: settings.keepalive, now: .now())
    }

    func handlerAdded(context: ChannelHandlerContext) {
        id = sessions.register(user: user, ip: ip, port: port, channel: context.channel)
        let interval = sessions.settings.keepalive
        ControlSessions.send(.keepalive(milliseconds: Int(interval.nanoseconds / 1_000_000)), on: context.channel)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        keepalive = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let (handler, context) = loopBound.value
            switch handler.machine.tick(now: .now()) {
            case .ping: ControlSessions.send(.ping, on: context.channel)
            case .close: context.close(promise: nil)
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        keepalive?.cancel()
        keepalive = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        machine.heard(now: .now())
        decoder.append(&bytes)
        do {
            while let message = try decoder.next() {
                perform(machine.received(message, now: .now()), context: context)
            }
        } catch {
            logger.notice("control connection of \(user) from \(ip): \(error); closing it")
            perform(machine.invalid(), context: context)
        }
    }

    private func perform(_ action: ControlConnectionStateMachine.Action, context: ChannelHandlerContext) {
        let channel = context.channel
        let (sessions, user) = (self.sessions, self.user)
        switch action {
        case .none:
            break
        case .ignore:
            logger.debug("control connection of \(user): ignoring a server message from the client")
        case .close:
            context.close(promise: nil)
        case .overRate(let message):
            logger.notice(
                """
                control connection of \(user) from \(ip): over \(sessions.settings.requestsPerSecond) \
                requests a second; answered 2
                """
            )
            ControlSessions.send(message, on: channel)
        case .answerWho(let id, let who):
            Task { ControlSessions.send(.whoReply(id: id, route: await sessions.route(of: who)), on: channel) }
        case .answerKey(let id, let who):
            Task { ControlSessions.send(.keyReply(id: id, key: await sessions.key(of: who)), on: channel) }
        case .reverse(let id, let owner):
            Task {
                let grant = await sessions.reverse(requester: user, owner: owner)
                ControlSessions.send(.reverseReply(id: id, code: grant.code, token: grant.token), on: channel)
            }
        case .punch(let id, let owner):
            Task {
                let grant = await sessions.punch(requester: user, owner: owner)
                ControlSessions.send(.punchReply(id: id, code: grant.code, token: grant.token), on: channel)
            }
        case .relay(let id, let owner):
            Task {
                let grant = await sessions.relay(requester: user, owner: owner)
                ControlSessions.send(.relayReply(id: id, code: grant.code, token: grant.token), on: channel)
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            perform(machine.quiesce(), context: context)
        } else if let event = event as? ChannelEvent, case .inputClosed = event {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        perform(machine.failed(error), context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let id { sessions.ended(id, user: user, reason: machine.endReason, expire: machine.expiresOnEnd) }
        id = nil
        context.fireChannelInactive()
    }
}
