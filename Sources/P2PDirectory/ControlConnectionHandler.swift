import Logging
import NIOCore
import P2PProtocol

/// Serves one control connection after its `CONTROL` was answered 0 (it takes the place of the
/// ``DirectoryConnectionHandler`` in the pipeline): sends `PING` every keepalive interval (the
/// client answers each), closes the connection when the client has sent nothing for three, answers `WHO` and
/// `REVERSE`, and tells ``ControlSessions`` when the connection ends, which takes the user
/// offline.
final class ControlConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let sessions: ControlSessions
    private let user: String
    private let ip: String
    private let port: String
    private let logger: Logger
    private var decoder = ControlMessageDecoder()
    private var id: Int?
    private var lastHeard = NIODeadline.now()
    private var keepalive: RepeatedTask?
    private var endReason = "closed"
    /// False once the server is shutting down: the user stays connected in the directory, and
    /// its client opens a new control connection when the server is back (or, if it does not,
    /// the peer checks take it offline).
    private var expiresOnEnd = true
    /// Tokens for requests that make other users' clients act (a token bucket).
    private var requestTokens: Double
    private var tokensCounted = NIODeadline.now()
    /// WHO requests are cheap but not free: a client sending them far faster than any download
    /// asks is closed.
    private var whoTokens: Double = 200

    init(sessions: ControlSessions, user: String, ip: String, port: String, logger: Logger) {
        self.sessions = sessions
        self.user = user
        self.ip = ip
        self.port = port
        self.logger = logger
        requestTokens = Double(sessions.settings.requestBurst)
    }

    /// Adds the tokens earned since the last request.
    private func refill() {
        let now = NIODeadline.now()
        let seconds = Double((now - tokensCounted).nanoseconds) / 1e9
        tokensCounted = now
        let settings = sessions.settings
        requestTokens = min(Double(settings.requestBurst), requestTokens + seconds * settings.requestsPerSecond)
        whoTokens = min(200, whoTokens + seconds * 100)
    }

    /// Takes one token for a request that makes another client act; false when the session is
    /// over its rate (the request is answered 2).
    private func takeRequestToken() -> Bool {
        refill()
        guard requestTokens >= 1 else {
            logger.notice(
                "control connection of \(user) from \(ip): over \(sessions.settings.requestsPerSecond) requests a second; answered 2")
            return false
        }
        requestTokens -= 1
        return true
    }

    /// Takes one WHO token; false when the client is over 100 a second for long.
    private func takeWhoToken() -> Bool {
        refill()
        guard whoTokens >= 1 else { return false }
        whoTokens -= 1
        return true
    }

    func handlerAdded(context: ChannelHandlerContext) {
        id = sessions.register(user: user, ip: ip, port: port, channel: context.channel)
        let interval = sessions.settings.keepalive
        ControlSessions.send(.keepalive(milliseconds: Int(interval.nanoseconds / 1_000_000)), on: context.channel)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        keepalive = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let (handler, context) = loopBound.value
            handler.tick(context: context, interval: interval)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        keepalive?.cancel()
        keepalive = nil
    }

    private func tick(context: ChannelHandlerContext, interval: TimeAmount) {
        if NIODeadline.now() - lastHeard > interval * 3 {
            endReason = "was silent for \(interval.nanoseconds * 3 / 1_000_000) ms"
            context.close(promise: nil)
            return
        }
        ControlSessions.send(.ping, on: context.channel)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        lastHeard = .now()
        decoder.append(&bytes)
        do {
            while let message = try decoder.next() {
                handle(message, channel: context.channel)
            }
        } catch {
            logger.notice("control connection of \(user) from \(ip): \(error); closing it")
            endReason = "sent something invalid"
            context.close(promise: nil)
        }
    }

    private func handle(_ message: ControlMessage, channel: any Channel) {
        switch message {
        case .ping:
            break
        case .whoRequest(let id, let user):
            guard takeWhoToken() else {
                endReason = "sent WHO requests faster than 100 a second"
                channel.close(promise: nil)
                return
            }
            let sessions = self.sessions
            Task {
                let route = await sessions.route(of: user)
                ControlSessions.send(.whoReply(id: id, route: route), on: channel)
            }
        case .keyRequest(let id, let user):
            // Answered as WHO is, out of the same allowance: it is asked before every download.
            guard takeWhoToken() else {
                endReason = "sent WHO and KEY requests faster than 100 a second"
                channel.close(promise: nil)
                return
            }
            let sessions = self.sessions
            Task {
                let key = await sessions.key(of: user)
                ControlSessions.send(.keyReply(id: id, key: key), on: channel)
            }
        case .reverseRequest(let id, let owner):
            guard takeRequestToken() else {
                ControlSessions.send(.reverseReply(id: id, code: 2, token: ""), on: channel)
                return
            }
            let sessions = self.sessions
            let user = self.user
            Task {
                let (code, token) = await sessions.reverse(requester: user, owner: owner)
                ControlSessions.send(.reverseReply(id: id, code: code, token: token), on: channel)
            }
        case .punchRequest(let id, let owner):
            guard takeRequestToken() else {
                ControlSessions.send(.punchReply(id: id, code: 2, token: ""), on: channel)
                return
            }
            let (code, token) = sessions.punch(requester: user, owner: owner)
            ControlSessions.send(.punchReply(id: id, code: code, token: token), on: channel)
        case .relayRequest(let id, let owner):
            guard takeRequestToken() else {
                ControlSessions.send(.relayReply(id: id, code: 2, token: ""), on: channel)
                return
            }
            let (code, token) = sessions.relay(requester: user, owner: owner)
            ControlSessions.send(.relayReply(id: id, code: code, token: token), on: channel)
        case .keepalive, .reachability, .whoReply, .keyReply, .reverseReply, .dial, .punchReply, .meet, .relayReply, .relayTo:
            // The server's own messages: a client has no business sending them.
            logger.debug("control connection of \(user): ignoring a server message from the client")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            expiresOnEnd = false
            context.close(promise: nil)
        } else if let event = event as? ChannelEvent, case .inputClosed = event {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        endReason = "failed: \(error)"
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let id { sessions.ended(id, user: user, reason: endReason, expire: expiresOnEnd) }
        id = nil
        context.fireChannelInactive()
    }
}
