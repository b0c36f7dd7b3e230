import Logging
import Foundation
import NIOCore
import NIOPosix
import P2PProtocol

/// The control layer's requests on a directory connection (``ControlRequest``): the one place
/// the request path hands them over. Each is answered as the others are (operation log,
/// metrics, the server's code encoding); `CONTROL` and `RELAY` then hand the connection to
/// ``ControlConnectionHandler`` or ``RelayHandler``.
extension DirectoryConnectionHandler {
    func serve(
        _ controlRequest: ControlRequest, of request: Request, peerIP: String, key: String?,
        context: ChannelHandlerContext
    ) {
        switch controlRequest {
        case .identify(let user, let publicKey, let agreementKey, let signature):
            identify(
                request, user: user, publicKey: publicKey, agreementKey: agreementKey, signature: signature,
                context: context)
        case .control:
            openControl(request, peerIP: peerIP, key: key, context: context)
        case .rendezvous(let user, let token):
            // Behind a balancer, the port its PROXY header names (the socket's is the balancer's).
            meet(request, user: user, token: token, peerIP: peerIP, port: clientPort, context: context)
        case .relay(let user, let token):
            joinRelay(request, user: user, token: token, peerIP: peerIP, context: context)
        }
    }

    /// `IDENTIFY`: opens a keyed session (``ControlSessions/identify``) and answers its id and
    /// the server's agreement key, or a code; then closes.
    private func identify(
        _ request: Request, user: String, publicKey: String, agreementKey: String, signature: String,
        context: ChannelHandlerContext
    ) {
        let start = NIODeadline.now()
        let promise = context.eventLoop.makePromise(of: IdentifyReply.self)
        if let controls {
            let dateTime = request.dateTime
            promise.completeWithTask {
                await controls.identify(
                    user: user, publicKey: publicKey, agreementKey: agreementKey, signature: signature,
                    dateTime: dateTime)
            }
        } else {
            promise.succeed(.refused(request.operation.otherErrorCode))
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        promise.futureResult.whenSuccess { reply in
            let (self_, context) = loopBound.value
            var buffer = ByteBuffer()
            var code: ResultCode = .ok
            if case .refused(let refusal) = reply { code = refusal }
            if (try? reply.encode(with: self_.encoder, into: &buffer)) == nil {
                buffer.clear()
                code = request.operation.otherErrorCode
                self_.encoder.writeCode(code, into: &buffer)
            }
            guard self_.answered(request, code: code, since: start) else { return }
            let channel = context.channel
            context.writeAndFlush(self_.wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// Records that an extension request (`CONTROL`, `RENDEZVOUS`, `RELAY`) was answered `code`
    /// (operation log, metrics); whether the connection is still there to be answered.
    func answered(_ request: Request, code: ResultCode, since start: NIODeadline) -> Bool {
        handler.served(request, code: code)
        metrics.served(request.operation, code: code, nanoseconds: (NIODeadline.now() - start).nanoseconds)
        return machine.replyReady()
    }

    /// `CONTROL`: once ``ControlSessions`` admits it, the reply 0 and the connection becomes the
    /// user's control connection (a ``ControlConnectionHandler`` takes this handler's place,
    /// which gives the connection's request slot back: a control connection is counted by
    /// ``ControlSettings/maxSessions`` instead). Any other code is sent and the connection closed.
    private func openControl(_ request: Request, peerIP: String, key: String?, context: ChannelHandlerContext) {
        let start = NIODeadline.now()
        let user = request.user
        let promise = context.eventLoop.makePromise(of: (code: ResultCode, port: String?).self)
        if let controls {
            promise.completeWithTask { await controls.admit(user: user, from: peerIP, key: key) }
        } else {
            promise.succeed((request.operation.otherErrorCode, nil))
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        promise.futureResult.whenSuccess { code, port in
            let (self_, context) = loopBound.value
            self_.finishControl(request, code: code, port: port, peerIP: peerIP, start: start, context: context)
        }
    }

    private func finishControl(
        _ request: Request, code: ResultCode, port: String?, peerIP: String, start: NIODeadline,
        context: ChannelHandlerContext
    ) {
        guard answered(request, code: code, since: start) else { return }
        var buffer = ByteBuffer()
        if request.proof != nil { write(.verified, into: &buffer) }
        encoder.writeCode(code, into: &buffer)
        guard code == .ok, let port, let controls else {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        do {
            try context.pipeline.syncOperations.addHandler(
                ControlConnectionHandler(sessions: controls, user: request.user, ip: peerIP, port: port, logger: logger)
            )
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }

    /// `RENDEZVOUS`: waits for the punch's other side (``ControlSessions/rendezvous``) and
    /// answers `0·<ip>·<port>·`, the other side's public address, or a code; then closes.
    private func meet(
        _ request: Request, user: String, token: String, peerIP: String, port: Int?, context: ChannelHandlerContext
    ) {
        let start = NIODeadline.now()
        let promise = context.eventLoop.makePromise(of: ControlSessions.RendezvousOutcome.self)
        if let controls, let port {
            promise.completeWithTask { await controls.rendezvous(user: user, token: token, ip: peerIP, port: port) }
        } else {
            promise.succeed(.refused(request.operation.otherErrorCode))
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        promise.futureResult.whenSuccess { outcome in
            let (self_, context) = loopBound.value
            var buffer = ByteBuffer()
            let code: ResultCode
            switch outcome {
            case .peer(let ip, let port):
                code = .ok
                if (try? RendezvousReplyDecoder.encode(ip: ip, port: port, encoder: self_.encoder, into: &buffer))
                    == nil
                {
                    buffer.clear()
                    self_.encoder.writeCode(request.operation.otherErrorCode, into: &buffer)
                }
            case .refused(let refusal):
                code = refusal
                self_.encoder.writeCode(refusal, into: &buffer)
            }
            guard self_.answered(request, code: code, since: start) else { return }
            let channel = context.channel
            context.writeAndFlush(self_.wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// `RELAY`: this connection is one side of a relayed transfer. Once the other side is there
    /// (``RelayHub``), it is answered 0 and a ``RelayHandler`` takes this handler's place (which
    /// gives back its request slot: relays are counted by ``RelaySettings/maxTransfers``). With
    /// several servers, a side whose other side waits on another server is carried there
    /// (``carry(_:to:peerIP:context:)``).
    private func joinRelay(
        _ request: Request, user: String, token: String, peerIP: String, context: ChannelHandlerContext
    ) {
        let start = NIODeadline.now()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let channel = context.channel
        let finish: @Sendable (RelayHub.Outcome) -> Void = { outcome in
            channel.eventLoop.execute {
                let (self_, context) = loopBound.value
                let code: ResultCode
                if case .refused(let refusal) = outcome { code = refusal } else { code = .ok }
                if case .carry(let address) = outcome {
                    // The server it goes to answers it, and records it.
                    self_.carry(request, to: address, peerIP: peerIP, context: context)
                    return
                }
                guard self_.answered(request, code: code, since: start) else { return }
                switch outcome {
                case .carry:
                    break
                case .relaying(let partner, let limiter):
                    do {
                        try context.pipeline.syncOperations.addHandler(RelayHandler(partner: partner, limiter: limiter))
                        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                    } catch {
                        context.close(promise: nil)
                    }
                case .refused(let code):
                    var buffer = ByteBuffer()
                    self_.encoder.writeCode(code, into: &buffer)
                    context.writeAndFlush(self_.wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil)
                    }
                }
            }
        }
        guard let controls, controls.relays.settings.isEnabled else {
            finish(.refused(request.operation.otherErrorCode))
            return
        }
        let encoder = self.encoder
        Task {
            switch await controls.routeRelay(user: user, token: token, ip: peerIP) {
            case .here:
                controls.relays.join(user: user, token: token, channel: channel, encoder: encoder, done: finish)
            case .carry(let address):
                finish(.carry(to: address))
            case .refused(let code):
                finish(.refused(code))
            }
        }
    }

    /// Carries this relay side to the server at `address` (host:port), where the other side
    /// waits: a connection there starting with a PROXY header naming this side's client (so
    /// that server sees the client, as it would behind the balancer) and the client's `RELAY`,
    /// then every byte passed through both ways, unpaced (that server holds the relay to its
    /// rates). When it cannot be reached, the side is answered 1.
    private func carry(_ request: Request, to address: String, peerIP: String, context: ChannelHandlerContext) {
        let channel = context.channel
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let refuse: @Sendable () -> Void = {
            channel.eventLoop.execute {
                let (self_, context) = loopBound.value
                guard self_.machine.replyReady() else { return }
                var buffer = ByteBuffer()
                self_.encoder.writeCode(1, into: &buffer)
                context.writeAndFlush(self_.wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
            }
        }
        guard let (host, port) = DirectoryApplication.parseLinkAddress(address) else {
            refuse()
            return
        }
        var opening = ByteBuffer()
        let family = peerIP.contains(":") ? "TCP6" : "TCP4"
        let local = peerIP.contains(":") ? "::1" : "127.0.0.1"
        opening.writeString("PROXY \(family) \(peerIP) \(local) \(clientPort ?? 0) \(port)\r\n")
        guard (try? RequestEncoder.encode(request, into: &opening)) != nil else {
            refuse()
            return
        }
        let logger = self.logger
        let firstBytes = opening
        ClientBootstrap(group: context.eventLoop)
            .connectTimeout(.seconds(2))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port)
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    logger.warning("RELAY: cannot reach the server at \(address) to carry a side there: \(error)")
                    refuse()
                case .success(let link):
                    channel.eventLoop.execute {
                        let (self_, context) = loopBound.value
                        guard self_.machine.replyReady() else {
                            link.close(promise: nil)
                            return
                        }
                        logger.info("RELAY: \(request.user)'s side carried to the server at \(address)")
                        link.writeAndFlush(firstBytes, promise: nil)
                        do {
                            try link.pipeline.syncOperations.addHandler(RelayHandler(partner: channel, limiter: nil))
                            try context.pipeline.syncOperations.addHandler(RelayHandler(partner: link, limiter: nil))
                            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                        } catch {
                            link.close(promise: nil)
                            context.close(promise: nil)
                        }
                    }
                }
            }
    }
}
