import NIOCore
import NIOPosix
import P2PNetworkSupport
import P2PProtocol
import Synchronization

/// The connection our client keeps open to our directory server while its user is connected
/// (docs/PROTOCOL.md, "Extension: control connection"): it keeps the user listed without the
/// server having to reach the user's port (the peer checks fail behind a NAT), tells whether
/// the server could reach that port, and carries the requests for connections reversed through
/// the owner. Opened only to a server that announces it (``ServerCapabilities``).
///
/// When the connection breaks, it is opened again (after 1, 2, then every 4 s) while the user is
/// connected; the server takes the user offline only when it stays away for three keepalive
/// intervals, so a short outage is survived.
final class ControlConnection: Sendable {
    /// What the owner side must do when the server asks it to connect to a downloader.
    typealias Dial = @Sendable (_ token: String, _ host: String, _ port: Int) -> Void
    /// What the owner side must do when the server asks it to take part in a hole punch.
    typealias Meet = @Sendable (_ token: String) -> Void

    private let directory: DirectoryClient
    private let user: String
    private let dateTime: @Sendable () async -> String
    private let onDial: Dial
    private let onMeet: Meet
    private let onRelayTo: Meet
    private let diagnostic: @Sendable (String) -> Void

    private struct State {
        var channel: (any Channel)?
        var pending: [String: CheckedContinuation<ControlMessage?, Never>] = [:]
        var nextID = 0
        /// Whether the server could reach this client's listening port (nil: not known yet).
        var reachable: Bool?
        var stopped = false
        var task: Task<Void, Never>?
    }

    private let state = Mutex(State())
    /// When the server was last heard from (NIODeadline's uptime nanoseconds).
    private let lastHeard = Atomic<UInt64>(0)
    /// The keepalive interval in milliseconds, as the server set it (`KEEPALIVE`).
    private let keepaliveMilliseconds = Atomic<Int>(2000)

    init(
        directory: DirectoryClient, user: String,
        dateTime: @escaping @Sendable () async -> String, onDial: @escaping Dial, onMeet: @escaping Meet,
        onRelayTo: @escaping Meet, diagnostic: @escaping @Sendable (String) -> Void
    ) {
        self.onMeet = onMeet
        self.onRelayTo = onRelayTo
        self.directory = directory
        self.user = user
        self.dateTime = dateTime
        self.onDial = onDial
        self.diagnostic = diagnostic
    }

    /// Opens the connection and keeps it open until ``stop()``. Returns once the first attempt
    /// is answered: the server's code (0 when open), nil when it could not be asked.
    func start() async -> ResultCode? {
        let (first, firstAnswer) = AsyncStream.makeStream(of: ResultCode?.self)
        let task = Task { await self.run(firstAnswer: firstAnswer) }
        state.withLock { $0.task = task }
        for await code in first { return code }
        return nil
    }

    /// Closes the connection for good (after the user's DISCONNECT: closed first, it would take
    /// the user offline before the DISCONNECT arrives).
    func stop() async {
        let (channel, task) = state.withLock { state -> ((any Channel)?, Task<Void, Never>?) in
            state.stopped = true
            return (state.channel, state.task)
        }
        try? await channel?.close()
        task?.cancel()
        await task?.value
    }

    var isOpen: Bool { state.withLock { $0.channel != nil } }

    /// Whether the server could reach this client's listening port; waits up to `wait` for the
    /// server's check to finish. Nil when unknown.
    func isReachable(wait: Duration = .seconds(3)) async -> Bool? {
        let deadline = ContinuousClock.now + wait
        while true {
            if let known = state.withLock({ $0.reachable }) { return known }
            guard ContinuousClock.now < deadline, isOpen else { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// How `user` can be reached, waiting up to `wait` while the server is still checking; nil
    /// when the server could not be asked.
    func route(of user: String, wait: Duration = .seconds(3)) async -> PeerRoute? {
        let deadline = ContinuousClock.now + wait
        while true {
            guard case .whoReply(_, let route)? = await ask({ .whoRequest(id: $0, user: user) }) else { return nil }
            guard route == .unknown, ContinuousClock.now < deadline else { return route }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// What the directory says of `user`'s key (docs/PROTOCOL.md, "Encrypted transfers"): the
    /// bound public key, nil when the user is bound to none. Throws when the server did not
    /// answer, or could not tell: a downloader must not take that for "no key".
    func key(of user: String) async throws(DownloadError) -> String? {
        guard case .keyReply(_, let key)? = await ask({ .keyRequest(id: $0, user: user) }) else {
            throw .unreachable("the directory server did not answer the question of \(user)'s key")
        }
        switch key {
        case ControlMessage.noKey: return nil
        case ControlMessage.unknownKey: throw .unreachable("the directory server cannot tell \(user)'s key now")
        default: return key
        }
    }

    /// Asks the server to have `owner` connect to this client; the token it will present.
    func reverse(owner: String) async throws(DownloadError) -> String {
        guard case .reverseReply(_, let code, let token)? = await ask({ .reverseRequest(id: $0, owner: owner) }) else {
            throw .unreachable("the directory server did not answer the request to reverse the connection")
        }
        switch code {
        case 0: return token
        case 1: throw .unreachable("\(owner) has no control connection: it cannot be asked to connect back")
        default:
            throw .unreachable("the directory server cannot reach this client either, so \(owner) cannot connect to it")
        }
    }

    /// Asks the server for a hole punch with `owner` (both behind NATs); the punch's token.
    func punch(owner: String) async throws(DownloadError) -> String {
        guard case .punchReply(_, let code, let token)? = await ask({ .punchRequest(id: $0, owner: owner) }) else {
            throw .unreachable("the directory server did not answer the request for a hole punch")
        }
        guard code == 0 else { throw .unreachable("\(owner) has no control connection: no hole punch with it") }
        return token
    }

    /// Asks the server to relay a transfer with `owner`; the relay's token.
    func relay(owner: String) async throws(DownloadError) -> String {
        guard case .relayReply(_, let code, let token)? = await ask({ .relayRequest(id: $0, owner: owner) }) else {
            throw .unreachable("the directory server did not answer the request for a relay")
        }
        switch code {
        case 0: return token
        case 1: throw .unreachable("\(owner) has no control connection: no relay with it")
        default:
            throw .unreachable(
                "the directory server relays no more transfers now (p2p-server --relay-limit, --relay-max-transfers)")
        }
    }

    /// Sends the message `make` builds with a fresh id and waits (at most 5 s) for the reply
    /// with that id.
    private func ask(_ make: (String) -> ControlMessage) async -> ControlMessage? {
        let (id, channel) = state.withLock { state -> (String, (any Channel)?) in
            state.nextID += 1
            return (String(state.nextID), state.channel)
        }
        guard let channel else { return nil }
        var buffer = channel.allocator.buffer(capacity: 64)
        guard (try? make(id).encode(into: &buffer)) != nil else { return nil }
        let bytes = buffer
        let timer = Task { [weak self] in
            try? await Task.sleep(for: .seconds(5))
            self?.answer(id, with: nil)
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { continuation in
            state.withLock { $0.pending[id] = continuation }
            channel.writeAndFlush(bytes).whenFailure { [weak self] _ in self?.answer(id, with: nil) }
        }
    }

    private func answer(_ id: String, with message: ControlMessage?) {
        let waiter = state.withLock { $0.pending.removeValue(forKey: id) }
        waiter?.resume(returning: message)
    }

    private enum End {
        /// The server answered CONTROL with this code.
        case refused(ResultCode)
        /// The connection could not be made or broke (`wasOpen`: after it had been answered 0).
        case lost(String, wasOpen: Bool)
        /// The server did not know the keyed session (forgotten here: the next try opens one).
        case unknownSession
    }

    private func run(firstAnswer: AsyncStream<ResultCode?>.Continuation) async {
        var failures = 0
        var announced = false
        defer { firstAnswer.finish() }
        while !state.withLock({ $0.stopped }) {
            let end = await session(opened: {
                failures = 0
                if !announced {
                    announced = true
                    firstAnswer.yield(0)
                    firstAnswer.finish()
                }
            })
            let pending = state.withLock { state in
                state.channel = nil
                state.reachable = nil
                defer { state.pending.removeAll() }
                return Array(state.pending.values)
            }
            for waiter in pending { waiter.resume(returning: nil) }
            if state.withLock({ $0.stopped }) { return }
            switch end {
            case .refused(let code):
                if !announced {
                    firstAnswer.yield(code)
                } else {
                    diagnostic(
                        code == 2
                            ? """
                                the directory server took \(user) offline while its control connection was down; \
                                CONNECT \(user) again
                                """
                            : """
                                the directory server refused \(user)'s control connection (code \(code)); other peers \
                                may not reach this client
                                """
                    )
                }
                return
            case .lost(let reason, let wasOpen):
                if !announced {
                    announced = true
                    firstAnswer.yield(nil)
                    firstAnswer.finish()
                }
                if wasOpen {
                    diagnostic("the control connection to the directory server broke (\(reason)); opening it again")
                }
            case .unknownSession:
                // (Answered by `session`, which tries again at once.)
                break
            }
            failures += 1
            try? await Task.sleep(for: .seconds(min(4, 1 << min(failures - 1, 2))))
        }
    }

    /// One control connection, from the CONTROL request to its end.
    private func session(retried: Bool = false, opened: () -> Void) async -> End {
        var request = ByteBuffer()
        let plain = Request(dateTime: await dateTime(), command: .control(user: user))
        // Keyed when the server has keys: a user bound to one gets its control connection
        // only so (docs/PROTOCOL.md, "Keys").
        let keyed: Request?
        do {
            keyed = try await directory.keyedForm(of: plain)
            try RequestEncoder.encode(keyed ?? plain, into: &request)
        } catch let error as DirectoryClientError {
            return .lost("\(error)", wasOpen: false)
        } catch {
            return .refused(3)
        }
        let connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(3))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: directory.host, port: directory.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            return .lost(shortDescription(of: error), wasOpen: false)
        }
        let bytes = request
        var wasOpen = false
        do {
            let end = try await connection.executeThenClose { inbound, outbound -> End in
                try await outbound.write(bytes)
                var iterator = inbound.makeAsyncIterator()
                var buffer = ByteBuffer()
                var codeDecoder = ResultCodeDecoder()
                var code: ResultCode?
                var statusDecoder = ResultCodeDecoder()
                var verified = keyed == nil
                while code == nil || !codeDecoder.skipTerminator(&buffer) {
                    guard var chunk = try await iterator.next() else {
                        return .lost("the server closed the connection without answering CONTROL", wasOpen: false)
                    }
                    buffer.writeBuffer(&chunk)
                    if !verified {
                        // A keyed request's status comes first (``KeyedStatus``).
                        guard let status = try statusDecoder.decode(&buffer), statusDecoder.skipTerminator(&buffer)
                        else { continue }
                        switch KeyedStatus(rawValue: status.rawValue) {
                        case .verified?:
                            verified = true
                        case .unknownSession?:
                            await directory.forgetSession(of: keyed!)
                            return .unknownSession
                        case .refused?, nil:
                            return .refused(3)
                        }
                    }
                    if code == nil { code = try codeDecoder.decode(&buffer) }
                    if let code, code != .ok { return .refused(code) }
                }
                wasOpen = true
                heard()
                state.withLock { $0.channel = connection.channel }
                opened()
                return try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await self.keepAlive(connection.channel) }
                    defer { group.cancelAll() }
                    var decoder = ControlMessageDecoder()
                    decoder.append(&buffer)
                    while true {
                        while let message = try decoder.next() { handle(message, on: connection.channel) }
                        guard var chunk = try await iterator.next() else {
                            return .lost("the server closed it", wasOpen: true)
                        }
                        heard()
                        decoder.append(&chunk)
                    }
                }
            }
            guard case .unknownSession = end else { return end }
            // Once at once (the server restarted, or this is another server of a cluster).
            return retried
                ? .lost("the server did not know this client's keyed session", wasOpen: false)
                : await session(retried: true, opened: opened)
        } catch {
            return .lost(shortDescription(of: error), wasOpen: wasOpen)
        }
    }

    private func heard() {
        lastHeard.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
    }

    /// Closes the connection when the server has been silent for three keepalive intervals (it
    /// sends PING every interval, and this side answers each one: ``handle(_:)``).
    private func keepAlive(_ channel: any Channel) async throws {
        while true {
            let interval = keepaliveMilliseconds.load(ordering: .relaxed)
            try await Task.sleep(for: .milliseconds(interval))
            let limit = UInt64(interval) * 3_000_000
            if NIODeadline.now().uptimeNanoseconds - lastHeard.load(ordering: .relaxed) > limit {
                try? await channel.close()
                return
            }
        }
    }

    private func handle(_ message: ControlMessage, on channel: any Channel) {
        switch message {
        case .ping:
            var buffer = channel.allocator.buffer(capacity: 8)
            guard (try? ControlMessage.ping.encode(into: &buffer)) != nil else { return }
            channel.writeAndFlush(buffer, promise: nil)
        case .whoRequest, .keyRequest, .reverseRequest, .punchRequest, .relayRequest:
            break
        case .relayTo(let token):
            onRelayTo(token)
        case .meet(let token):
            onMeet(token)
        case .keepalive(let milliseconds):
            keepaliveMilliseconds.store(milliseconds, ordering: .relaxed)
        case .reachability(let reachable):
            state.withLock { $0.reachable = reachable }
        case .whoReply(let id, _), .keyReply(let id, _), .reverseReply(let id, _, _), .punchReply(let id, _, _),
            .relayReply(let id, _, _):
            answer(id, with: message)
        case .dial(let token, let host, let port):
            guard let port = Int(port), (1...65535).contains(port) else { return }
            onDial(token, host, port)
        }
    }
}
