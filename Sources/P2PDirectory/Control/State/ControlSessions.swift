import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import P2POperationLog
import P2PProtocol
import Synchronization

/// Settings of our clients' control connections (docs/PROTOCOL.md, "Extension: control
/// connection").
public struct ControlSettings: Sendable {
    /// Each side sends `PING` this often; a connection silent for three intervals is closed, and
    /// its user goes offline.
    public var keepalive: TimeAmount
    /// Control connections open at once; a CONTROL beyond them is answered 3, and that client
    /// is checked with probes like any other.
    public var maxSessions: Int
    /// How long the one reachability check at the start may take.
    public var reachabilityTimeout: Duration
    /// Seconds for which a server's record that it holds a user's control connection keeps
    /// the other servers' peer checks away (renewed every third of it): a server that dies
    /// leaves its users to the others' checks after at most this long.
    public var lease: TimeInterval
    /// Control connections from one address at once (a household or a campus behind one NAT
    /// has several users; one attacker must not hold them all).
    public var maxSessionsPerAddress: Int
    /// Requests that make another user's client act (`REVERSE`, `PUNCH`, `RELAY`) one session
    /// may send: this many at once, then `requestsPerSecond`; beyond, they are answered 2.
    public var requestBurst: Int
    public var requestsPerSecond: Double
    /// Punches waiting for their rendezvous that one user may be part of at once.
    public var maxPendingPunchesPerUser: Int

    public init(
        keepalive: TimeAmount = .seconds(2), maxSessions: Int = 100_000, reachabilityTimeout: Duration = .seconds(2),
        lease: TimeInterval = 15, maxSessionsPerAddress: Int = 64, requestBurst: Int = 16,
        requestsPerSecond: Double = 2,
        maxPendingPunchesPerUser: Int = 8
    ) {
        self.keepalive = keepalive
        self.maxSessions = maxSessions
        self.reachabilityTimeout = reachabilityTimeout
        self.lease = lease
        self.maxSessionsPerAddress = maxSessionsPerAddress
        self.requestBurst = requestBurst
        self.requestsPerSecond = requestsPerSecond
        self.maxPendingPunchesPerUser = maxPendingPunchesPerUser
    }
}

/// The open control connections, one per connected user of ours, and what the server does with
/// them: a user whose control connection is open is alive (the peer checks leave it alone, and
/// it does not need to be reachable), and goes offline the moment that connection ends; the
/// server checks once whether its listening port can be reached from outside, tells whoever
/// asks (`WHO`), and asks an unreachable owner to connect out to a downloader (`REVERSE`,
/// `DIAL`).
///
/// The sessions live in this process: with several servers behind a load balancer, a `DIAL` or
/// `MEET` for a user whose control connection is on another server goes through the store
/// (``DirectoryCoordination/forwardControl(_:to:)``). A punch is paired on the server that made
/// it, which its token names; a `RENDEZVOUS` the balancer sent elsewhere is passed to it and
/// answered from it (``ClusterMessage``). A relay's side that reaches another server waits
/// there if it is the first (that server then pairs the relay), or is carried by its server to
/// the server where the first waits.
public final class ControlSessions: Sendable {
    struct Session {
        var id: Int
        var user: String
        var ip: String
        var port: String
        var channel: any Channel
        var route: PeerRoute
    }

    public let settings: ControlSettings
    private let store: any DirectoryStore
    private let operationLog: (any OperationLogSink)?
    private let console: @Sendable (String) -> Void
    private let logger: Logger
    private let state = Mutex<(sessions: [String: Session], nextID: Int, perAddress: [String: Int])>(([:], 0, [:]))

    /// A side of a hole punch waiting at the rendezvous for the other: the public address and
    /// port it came from, and where its answer goes.
    struct PunchSide: Sendable {
        var token: String
        var user: String
        var ip: String
        var port: Int
        var answer: Answer

        enum Answer: Sendable {
            /// Its `RENDEZVOUS` connection is on this server.
            case here(CheckedContinuation<RendezvousOutcome, Never>)
            /// It came to the server with this id, which waits for the answer.
            case elsewhere(server: String)
        }
    }

    /// How a rendezvous ends for one side.
    enum RendezvousOutcome: Sendable, Equatable {
        /// The other side's public address and port.
        case peer(ip: String, port: Int)
        case refused(ResultCode)
    }

    /// The punches waiting for their rendezvous.
    private let punches = Mutex(TokenPairing<PunchSide>(repeats: .replaces))
    /// The sides of other servers' punches whose `RENDEZVOUS` came here, waiting for the answer
    /// of the server that pairs them, by token and user (each is an open connection: the
    /// connection limits bound them).
    private let passedOn = Mutex<(waiting: [PassedOnKey: PassedOnSide], next: Int)>(([:], 0))

    struct PassedOnSide {
        /// Which of the side's connections (one that came again replaces the earlier).
        var id: Int
        var continuation: CheckedContinuation<RendezvousOutcome, Never>
    }

    struct PassedOnKey: Hashable {
        var token: String
        var user: String
    }

    /// This server among those sharing the directory: 32 random bits in 8 hex digits, the start
    /// of every punch and relay token it makes.
    public let serverID: String
    /// Where the other servers sharing the directory reach this one (host:port) to carry a
    /// relay's side here (``listening(at:)``).
    private let address = Mutex<String?>(nil)
    /// The sides of other servers' relays that came here, waiting to be told where to go.
    private let relayRoutes = Mutex<[PassedOnKey: CheckedContinuation<ClusterMessage, Never>]>([:])
    /// Where the punches' and relays' timers run.
    private let timers: any EventLoop

    /// Relayed transfers (off unless the operator allows them).
    let relays: RelayHub

    /// The keyed sessions (docs/PROTOCOL.md, "Keys").
    public let keyed: KeyedSessions

    public init(
        settings: ControlSettings, store: any DirectoryStore, operationLog: (any OperationLogSink)?,
        relay: RelaySettings = RelaySettings(), metrics: DirectoryMetrics = .none,
        sessionSecret: SymmetricKey = SymmetricKey(size: .bits256),
        console: @escaping @Sendable (String) -> Void, logger: Logger,
        timers: any EventLoop = MultiThreadedEventLoopGroup.singleton.any()
    ) {
        keyed = KeyedSessions(secret: sessionSecret)
        let serverID = String(ControlMessage.makeToken().prefix(8))
        self.serverID = serverID
        relays = RelayHub(settings: relay, metrics: metrics, logger: logger, timers: timers, tokenPrefix: serverID)
        self.timers = timers
        self.settings = settings
        self.store = store
        self.operationLog = operationLog
        self.console = console
        self.logger = logger
    }

    /// How many control connections are open.
    public var count: Int { state.withLock { $0.sessions.count } }

    /// The code for `CONTROL` from `ip` for `user`, and the user's listening port when 0:
    /// 1 no such user, 2 not connected, 3 connected from another address (always checked: the
    /// control connection is told where downloaders are and hands out their tokens), too
    /// many control connections, or the directory failing.
    ///
    /// A user bound to a key gets its control connection only from a request proven by that
    /// key (`key`); anyone else's, from its own address too (a neighbour behind the same NAT),
    /// is answered 3.
    /// The answer to `KEY`: the public key `user` is bound to, ``ControlMessage/noKey``, or
    /// ``ControlMessage/unknownKey`` when the directory cannot be read.
    func key(of user: String) async -> String {
        do {
            return try await store.boundKey(of: user) ?? ControlMessage.noKey
        } catch {
            logger.warning("KEY for \(user): cannot read the directory: \(error)")
            return ControlMessage.unknownKey
        }
    }

    func admit(user: String, from ip: String, key: String? = nil) async -> (code: ResultCode, port: String?) {
        let presence: Presence
        let boundKey: String?
        do {
            presence = try await store.presence(of: user)
            boundKey = try await store.boundKey(of: user)
        } catch {
            logger.warning("CONTROL for \(user): cannot read the directory: \(error)")
            return (3, nil)
        }
        if let boundKey, boundKey != key {
            logger.notice(
                "CONTROL for \(user) from \(ip) refused: the user is bound to a key the request did not prove")
            return (3, nil)
        }
        switch presence {
        case .unknown: return (1, nil)
        case .offline: return (2, nil)
        case .online(let connectedIP, let port):
            guard connectedIP == ip else {
                logger.notice("CONTROL for \(user) from \(ip) refused: it is connected from \(connectedIP)")
                return (3, nil)
            }
            guard count < settings.maxSessions else {
                logger.notice("CONTROL for \(user) refused: \(settings.maxSessions) control connections are open")
                return (3, nil)
            }
            let fromAddress = state.withLock { $0.perAddress[ip, default: 0] }
            // The user's own earlier session (replaced on register) does not count against it.
            let replacing = state.withLock { $0.sessions[user]?.ip == ip } ? 1 : 0
            guard fromAddress - replacing < settings.maxSessionsPerAddress else {
                logger.notice(
                    """
                    CONTROL for \(user) from \(ip) refused: \(settings.maxSessionsPerAddress) control connections \
                    from that address are open
                    """
                )
                return (3, nil)
            }
            return (0, port)
        }
    }

    /// `IDENTIFY`: opens a keyed session for `user` if the signature holds and the user is not
    /// bound to another key (``KeyedSessions/open``).
    func identify(
        user: String, publicKey: String, agreementKey: String, signature: String, dateTime: String
    ) async -> IdentifyReply {
        let boundKey: String?
        do {
            boundKey = try await store.boundKey(of: user)
        } catch {
            logger.warning("IDENTIFY for \(user): cannot read the directory: \(error)")
            return .refused(3)
        }
        return keyed.open(
            user: user, publicKey: publicKey, agreementKey: agreementKey, signature: signature, dateTime: dateTime,
            boundKey: boundKey)
    }

    /// Records the control connection of `user` (replacing, and closing, an earlier one) and
    /// starts the reachability check. Returns the session's id, for ``ended(_:user:)``.
    func register(user: String, ip: String, port: String, channel: any Channel) -> Int {
        let (id, previous) = state.withLock { state -> (Int, Session?) in
            state.nextID += 1
            let previous = state.sessions[user]
            if let previous { Self.uncount(previous.ip, in: &state.perAddress) }
            state.sessions[user] = Session(
                id: state.nextID, user: user, ip: ip, port: port, channel: channel, route: .unknown)
            state.perAddress[ip, default: 0] += 1
            return (state.nextID, previous)
        }
        previous?.channel.close(promise: nil)
        checkReachability(id: id, user: user, ip: ip, port: port, channel: channel)
        let store = self.store
        let lease = settings.lease
        Task { try? await store.holdControl([ConnectedUser(name: user, ip: ip, port: port)], until: Date() + lease) }
        return id
    }

    /// Renews, every third of ``ControlSettings/lease``, the store's record that this server
    /// holds its users' control connections (for the peer checks of the other servers sharing
    /// the directory), until cancelled.
    public func renewLeases() async {
        let lease = settings.lease
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: .seconds(lease / 3))
            } catch {
                return
            }
            let users = state.withLock { state in
                state.sessions.values.map { ConnectedUser(name: $0.user, ip: $0.ip, port: $0.port) }
            }
            guard !users.isEmpty else { continue }
            do {
                try await store.holdControl(users, until: Date() + lease)
            } catch {
                logger.warning("cannot renew the control connections' leases: \(error)")
            }
        }
    }

    /// The connection of session `id` ended: the user goes offline, as if its peer had failed its
    /// checks (unless it has connected again since, from elsewhere or with another port).
    func ended(_ id: Int, user: String, reason: String, expire: Bool) {
        let session = state.withLock { state -> Session? in
            guard let session = state.sessions[user], session.id == id else { return nil }
            Self.uncount(session.ip, in: &state.perAddress)
            state.sessions[user] = nil
            return session
        }
        guard let session, expire else { return }
        let store = self.store
        let console = self.console
        let operationLog = self.operationLog
        Task {
            let code = await store.apply(.expire(user: user, ip: session.ip, port: session.port))
            // Not 0: the user said DISCONNECT first (the usual end), or connected again.
            guard code == .ok else { return }
            console("s> EXPIRE \(user): its control connection \(reason)")
            operationLog?.submit(
                OperationRecord(user: user, operation: "EXPIRE", dateTime: DateTimeFormat.string(from: Date())))
        }
    }

    /// Whether `user` is kept alive by its control connection (the peer checks skip it).
    public func holds(_ user: ConnectedUser) -> Bool {
        state.withLock { state in
            guard let session = state.sessions[user.name] else { return false }
            return session.ip == user.ip && session.port == user.port
        }
    }

    /// How `user` can be reached (`WHO`). A user whose control connection is on another server
    /// sharing the directory is said to be unreachable: a reversed connection reaches it
    /// whether or not it could be reached directly.
    func route(of user: String) async -> PeerRoute {
        if let route = state.withLock({ $0.sessions[user]?.route }) { return route }
        guard case .online? = try? await store.presence(of: user) else { return .offline }
        if (try? await store.isControlHeld(user)) == true { return .unreachable }
        return .direct
    }

    /// `REVERSE`: asks `owner` over its control connection (here, or through the store on the
    /// server that holds it) to connect to `requester`'s listening port with a fresh token, and
    /// returns the token.
    func reverse(requester: String, owner: String) async -> TokenGrant {
        let (from, to) = state.withLock { ($0.sessions[requester], $0.sessions[owner]) }
        guard let from, from.route == .reachable else { return .refused(code: 2) }
        let token = ControlMessage.makeToken()
        let dial = ControlMessage.dial(token: token, host: from.ip, port: from.port)
        if to == nil {
            guard (try? await store.isControlHeld(owner)) == true else { return .refused(code: 1) }
        }
        guard await deliver(dial, to: owner, here: to, for: "REVERSE") else { return .refused(code: 1) }
        logger.info("REVERSE: \(owner) asked to connect to \(requester) at \(from.ip):\(from.port)")
        return .granted(token: token)
    }

    /// Delivers the control messages other servers forward to users whose control connection
    /// is here, until cancelled.
    public func receiveForwarded() async {
        while !Task.isCancelled {
            do {
                try await store.receiveForwardedControl { addressee, fields in
                    switch addressee {
                    case .user(let user):
                        guard let message = try? ControlMessage(fields: fields),
                            let channel = self.state.withLock({ $0.sessions[user]?.channel })
                        else { return }
                        Self.send(message, on: channel)
                    case .server(let id):
                        guard id == self.serverID || id == ClusterMessage.everyServer,
                            let message = ClusterMessage(fields: fields)
                        else { return }
                        self.receive(message)
                    }
                }
                return
            } catch {
                if Task.isCancelled { return }
                logger.warning("cannot receive the control messages other servers pass on: \(error); again in 1 s")
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Tells the other servers sharing the directory how many transfers this one relays, at
    /// once when the count changes and every ``RelayHub/loadInterval`` while it is not 0 (a
    /// count not renewed is dropped), and follows theirs: the relay limit holds for the cluster
    /// (``ClusterRelayLoad``). Runs until cancelled.
    public func shareRelayLoad() async {
        guard relays.settings.isEnabled else { return }
        let (ticks, tick) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(2))
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in self.relays.loadChanges { tick.yield(true) }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: RelayHub.loadInterval)
                    tick.yield(false)
                }
                tick.finish()
            }
            group.addTask {
                var told = 0
                for await changed in ticks {
                    // Counts of servers that went quiet run out here too.
                    self.relays.share()
                    let active = self.relays.active
                    guard changed || active > 0 || told > 0 else { continue }
                    let message = ClusterMessage.relayLoad(server: self.serverID, active: active)
                    if await self.pass(message, toServer: ClusterMessage.everyServer) { told = active }
                }
            }
            await group.waitForAll()
        }
    }

    private static func uncount(_ ip: String, in perAddress: inout [String: Int]) {
        let count = perAddress[ip, default: 1] - 1
        perAddress[ip] = count > 0 ? count : nil
    }

    /// The server that made the punch `token` (``serverID``), nil for a token none made.
    static func home(of token: String) -> String? {
        guard token.utf8.count == 40, token.utf8.allSatisfy({ $0 < 128 && Character(Unicode.Scalar($0)).isHexDigit })
        else { return nil }
        return String(token.prefix(8))
    }

    /// `PUNCH`: both `requester` and `owner` are behind NATs. Tells the owner to take part
    /// (`MEET`, through the store when its control connection is on another server) and returns
    /// the punch's token, which names this server. The punch is forgotten after 30 s.
    func punch(requester: String, owner: String) async -> TokenGrant {
        let (from, to) = state.withLock { ($0.sessions[requester], $0.sessions[owner]) }
        if to == nil {
            guard (try? await store.isControlHeld(owner)) == true else { return .refused(code: 1) }
        }
        guard from != nil else { return .refused(code: 2) }
        let token = serverID + ControlMessage.makeToken()
        // Bounded per user: a loop of PUNCH bob would otherwise grow the table without end and
        // make bob's client open a rendezvous connection for each. (The requester's count is
        // exact: its punches are all made here; an owner on another server may be part of this
        // many on each server.)
        let limit = settings.maxPendingPunchesPerUser
        let expires = NIODeadline.now() + .seconds(30)
        let admitted = punches.withLock { punches -> Bool in
            guard punches.pending(involving: owner) < limit, punches.pending(involving: requester) < limit else {
                return false
            }
            punches.create(token: token, owner: owner, downloader: requester, expires: expires)
            return true
        }
        guard admitted else {
            logger.notice("PUNCH from \(requester) to \(owner) refused: \(limit) punches of one of them are waiting")
            return .refused(code: 2)
        }
        expirePunch(token, at: expires)
        guard await deliver(.meet(token: token), to: owner, here: to, for: "PUNCH") else { return .refused(code: 1) }
        logger.info("PUNCH: \(requester) and \(owner) are to punch through their NATs")
        return .granted(token: token)
    }

    /// `RENDEZVOUS`: `user`, one side of the punch `token`, connected from `ip`:`port` (the
    /// public address and port of the socket it will punch from). Waits up to `wait` for the
    /// other side and answers both at the same moment with each other's address, so that their
    /// connection attempts start together: 1 when the punch is unknown or not this user's (or
    /// the request does not come from the address its control connection did), 2 when the other
    /// side did not come. A punch another server made is paired there (``ClusterMessage``).
    func rendezvous(user: String, token: String, ip: String, port: Int, wait: Duration = .seconds(5)) async
        -> RendezvousOutcome
    {
        guard await hasControl(user, from: ip), let home = Self.home(of: token) else { return .refused(1) }
        guard home != serverID else {
            let givesUp = NIODeadline.now() + TimeAmount(wait)
            return await withCheckedContinuation { continuation in
                let side = PunchSide(token: token, user: user, ip: ip, port: port, answer: .here(continuation))
                arrive(side, givesUp: givesUp)
            }
        }
        let key = PassedOnKey(token: token, user: user)
        let arrived = ClusterMessage.rendezvousArrived(token: token, user: user, ip: ip, port: port, from: serverID)
        return await withCheckedContinuation { continuation in
            // A side that comes again takes the place of the one waiting (as on the home server).
            let (id, replaced) = passedOn.withLock { passedOn in
                passedOn.next += 1
                let side = PassedOnSide(id: passedOn.next, continuation: continuation)
                return (passedOn.next, passedOn.waiting.updateValue(side, forKey: key))
            }
            replaced?.continuation.resume(returning: .refused(1))
            // The home server answers within `wait`; a second more, and it is taken for gone.
            timers.scheduleTask(deadline: .now() + TimeAmount(wait) + .seconds(1)) { [self] in
                passedOn.withLock { passedOn -> PassedOnSide? in
                    guard let waiting = passedOn.waiting[key], waiting.id == id else { return nil }
                    passedOn.waiting[key] = nil
                    return waiting
                }?.continuation.resume(returning: .refused(2))
            }
            Task {
                if await self.pass(arrived, toServer: home) == false {
                    self.receive(.rendezvousAnswered(token: token, user: user, outcome: .refused(1)))
                }
            }
        }
    }

    /// Whether `user` has a control connection from `ip`: here, or (its lease in the store) on
    /// another server sharing the directory, connected from that address.
    private func hasControl(_ user: String, from ip: String) async -> Bool {
        if let session = state.withLock({ $0.sessions[user] }) { return session.ip == ip }
        guard case .online(let connectedIP, _)? = try? await store.presence(of: user), connectedIP == ip else {
            return false
        }
        return (try? await store.isControlHeld(user)) == true
    }

    /// A side of one of this server's punches has come (here, or to another server): it waits,
    /// or it completes the pair, and both are answered at once.
    private func arrive(_ side: PunchSide, givesUp: NIODeadline) {
        let arrival = punches.withLock { $0.arrive(token: side.token, user: side.user, side: side, givesUp: givesUp) }
        switch arrival {
        case .refuse:
            answer(side, .refused(1))
        case .pair(let other, _):
            answerTogether([
                (other, .peer(ip: side.ip, port: side.port)), (side, .peer(ip: other.ip, port: other.port)),
            ])
        case .wait(let replaced):
            if let replaced { answer(replaced, .refused(1)) }
            expirePunch(side.token, at: givesUp)
        }
    }

    /// Answers a side of one of this server's punches, where its connection is.
    private func answer(_ side: PunchSide, _ outcome: RendezvousOutcome) {
        switch side.answer {
        case .here(let continuation):
            continuation.resume(returning: outcome)
        case .elsewhere:
            Task { await pass(outcome, to: side) }
        }
    }

    /// Answers both sides of a punch at about the same moment, so that their SYNs cross (one
    /// that comes before its NAT saw its own side's goes out is dropped, and TCP tries again
    /// only a second later): a side on another server is passed its answer first, and one here
    /// is answered once PostgreSQL has taken that (it hands a `NOTIFY` to the listeners then).
    private func answerTogether(_ answers: [(PunchSide, RendezvousOutcome)]) {
        let elsewhere = answers.filter { if case .elsewhere = $0.0.answer { true } else { false } }
        guard !elsewhere.isEmpty else {
            for (side, outcome) in answers { answer(side, outcome) }
            return
        }
        Task {
            await withTaskGroup(of: Void.self) { group in
                for (side, outcome) in elsewhere { group.addTask { await self.pass(outcome, to: side) } }
            }
            for (side, outcome) in answers {
                if case .here(let continuation) = side.answer { continuation.resume(returning: outcome) }
            }
        }
    }

    /// Passes a side's answer to the server its `RENDEZVOUS` connection is on.
    private func pass(_ outcome: RendezvousOutcome, to side: PunchSide) async {
        guard case .elsewhere(let server) = side.answer else { return }
        _ = await pass(
            .rendezvousAnswered(token: side.token, user: side.user, outcome: outcome), toServer: server)
    }

    /// Passes `message` to the server sharing the directory whose id is `server`; whether it
    /// went (a failure is logged).
    private func pass(_ message: ClusterMessage, toServer server: String) async -> Bool {
        do {
            try await store.forwardControl(message.fields, toServer: server)
            return true
        } catch {
            logger.warning("cannot pass \(message.fields.first ?? "a message") to server \(server): \(error)")
            return false
        }
    }

    /// Sends `message` to `user`'s control connection: on it when it is here (`session`), else
    /// through the store to the server holding it; whether it went (a failure is logged).
    private func deliver(
        _ message: ControlMessage, to user: String, here session: Session?, for request: String
    ) async -> Bool {
        if let session {
            Self.send(message, on: session.channel)
            return true
        }
        do {
            try await store.forwardControl(message.fields, to: user)
            return true
        } catch {
            logger.warning("\(request): cannot pass the request on to \(user)'s server: \(error)")
            return false
        }
    }

    /// A message from another server sharing the directory.
    private func receive(_ message: ClusterMessage) {
        switch message {
        case .rendezvousArrived(let token, let user, let ip, let port, let from):
            let side = PunchSide(token: token, user: user, ip: ip, port: port, answer: .elsewhere(server: from))
            arrive(side, givesUp: .now() + .seconds(5))
        case .rendezvousAnswered(let token, let user, let outcome):
            passedOn.withLock { $0.waiting.removeValue(forKey: PassedOnKey(token: token, user: user)) }?
                .continuation.resume(returning: outcome)
        case .relayArrived(let token, let user, let from, let address):
            let here = self.address.withLock { $0 } ?? ""
            let reply = relays.arrivedElsewhere(token: token, user: user, address: address, here: here)
            Task { _ = await pass(reply, toServer: from) }
        case .relayLoad(let server, let active):
            // Every server hears its own word too.
            if server != serverID { relays.load(of: server, active: active) }
        case .relayWait(let token, let user, _, _), .relayGo(let token, let user, _),
            .relayRefused(let token, let user, _):
            relayRoutes.withLock { $0.removeValue(forKey: PassedOnKey(token: token, user: user)) }?
                .resume(returning: message)
        }
    }

    /// At `deadline`, ends what of the punch `token` has had its time: the punch, or the side
    /// waiting for the other (answered 2 either way).
    private func expirePunch(_ token: String, at deadline: NIODeadline) {
        timers.scheduleTask(deadline: deadline) { [self] in
            switch punches.withLock({ $0.expire(token: token, now: .now()) }) {
            case .pairingExpired(_, let waiting?), .gaveUp(let waiting):
                answer(waiting, .refused(2))
            case .pairingExpired(_, nil), nil:
                break
            }
        }
    }

    /// `RELAY` over the control connection: a relay between `requester` and `owner` (both must
    /// have control connections, the owner's here or on another server sharing the directory);
    /// tells the owner (`RELAY_TO`), returns the code and the token, which names this server.
    func relay(requester: String, owner: String) async -> TokenGrant {
        let (from, to) = state.withLock { ($0.sessions[requester], $0.sessions[owner]) }
        if to == nil {
            guard (try? await store.isControlHeld(owner)) == true else { return .refused(code: 1) }
        }
        guard from != nil else { return .refused(code: 2) }
        let grant = relays.create(owner: owner, downloader: requester)
        guard case .granted(let token) = grant else { return grant }
        guard await deliver(.relayTo(token: token), to: owner, here: to, for: "RELAY") else {
            return .refused(code: 1)
        }
        return grant
    }

    /// The server listens at `address` (host:port): the others sharing the directory carry
    /// relays' sides there.
    public func listening(at address: String) {
        self.address.withLock { $0 = address }
    }

    /// Where a relay's side goes.
    enum RelayRoute: Sendable, Equatable {
        /// It joins the relay here (``RelayHub/join``).
        case here
        /// The other side waits on the server at this address: carry it there.
        case carry(to: String)
        case refused(ResultCode)
    }

    /// `RELAY` from `ip`: where `user`'s side of the relay `token` goes. A relay this server
    /// made, or whose first side waits here, is joined here; another server's is asked about.
    func routeRelay(user: String, token: String, ip: String) async -> RelayRoute {
        guard await hasControl(user, from: ip), let home = Self.home(of: token) else { return .refused(1) }
        if home == serverID || relays.pairs(token) { return .here }
        guard let address = address.withLock({ $0 }) else { return .refused(1) }
        let key = PassedOnKey(token: token, user: user)
        let arrived = ClusterMessage.relayArrived(token: token, user: user, from: serverID, address: address)
        let reply = await withCheckedContinuation { continuation in
            relayRoutes.withLock { $0.updateValue(continuation, forKey: key) }?
                .resume(returning: .relayRefused(token: token, user: user, code: 1))
            timers.scheduleTask(in: .seconds(5)) { [self] in
                relayRoutes.withLock { $0.removeValue(forKey: key) }?
                    .resume(returning: .relayRefused(token: token, user: user, code: 1))
            }
            Task {
                if await self.pass(arrived, toServer: home) == false {
                    self.receive(.relayRefused(token: token, user: user, code: 1))
                }
            }
        }
        switch reply {
        case .relayWait(_, _, let owner, let downloader):
            relays.adopt(token: token, owner: owner, downloader: downloader)
            return .here
        case .relayGo(_, _, let address):
            return .carry(to: address)
        case .relayRefused(_, _, let code):
            return .refused(code)
        default:
            return .refused(1)
        }
    }

    static func send(_ message: ControlMessage, on channel: any Channel) {
        var buffer = channel.allocator.buffer(capacity: 64)
        guard (try? message.encode(into: &buffer)) != nil else { return }
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// Tries the user's listening port once from here, as a downloader would, records the
    /// answer and tells the client.
    private func checkReachability(id: Int, user: String, ip: String, port: String, channel: any Channel) {
        let timeout = settings.reachabilityTimeout
        Task {
            let answered = await PeerProbe.run(
                [PeerProbe.Target(ip: ip, port: port)], timeout: timeout, concurrency: 1, slice: .milliseconds(10),
                perSlice: 1, shouldStop: { false })
            let reachable = answered.first ?? false
            let current = state.withLock { state -> Bool in
                guard state.sessions[user]?.id == id else { return false }
                state.sessions[user]?.route = reachable ? .reachable : .unreachable
                return true
            }
            guard current else { return }
            logger.info("\(user) at \(ip):\(port) is \(reachable ? "reachable" : "not reachable") from outside")
            Self.send(.reachability(reachable), on: channel)
        }
    }
}
