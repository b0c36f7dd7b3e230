import CoreMetrics
import Logging
import NIOCore
import NIOPosix
import P2PProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What the server may spend relaying transfers between users no connection can be made
/// between (both behind NATs that give every connection a new port).
public struct RelaySettings: Sendable {
    /// Bytes per second for all relayed transfers together; 0 (the default) relays nothing.
    public var bytesPerSecond: Int
    /// Bytes per second for one relayed transfer (at most `bytesPerSecond`).
    public var perTransfer: Int
    /// Relayed transfers at once; more are refused.
    public var maxTransfers: Int
    /// Relays (set up or under way) one user may take part in at once, as downloader or owner:
    /// two accounts cannot hold every slot.
    public var maxTransfersPerUser: Int
    /// How long the first side of a relay waits for the second.
    public var joinTimeout: Duration
    /// A relay through which no byte has passed, either way, for this long is closed.
    public var idleTimeout: Duration

    public init(
        bytesPerSecond: Int = 0, perTransfer: Int? = nil, maxTransfers: Int = 8, maxTransfersPerUser: Int = 2,
        joinTimeout: Duration = .seconds(10), idleTimeout: Duration = .seconds(30)
    ) {
        self.bytesPerSecond = bytesPerSecond
        self.perTransfer = min(perTransfer ?? bytesPerSecond, bytesPerSecond)
        self.maxTransfers = maxTransfers
        self.maxTransfersPerUser = maxTransfersPerUser
        self.joinTimeout = joinTimeout
        self.idleTimeout = idleTimeout
    }

    public var isEnabled: Bool { bytesPerSecond > 0 && maxTransfers > 0 }

    /// `10M`, `500K`, `1G` (powers of 1024, an optional `B` or `/s`) or a plain number of bytes;
    /// nil when it is none of those.
    public static func parseRate(_ text: String) -> Int? {
        var digits = Substring(text.uppercased())
        if digits.hasSuffix("/S") { digits = digits.dropLast(2) }
        if digits.hasSuffix("B") { digits = digits.dropLast() }
        let units: [Character: Double] = ["K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024]
        var multiplier = 1.0
        if let last = digits.last, let unit = units[last] {
            multiplier = unit
            digits = digits.dropLast()
        }
        guard let value = Double(digits), value >= 0, value * multiplier < Double(Int.max) else { return nil }
        return Int(value * multiplier)
    }
}

/// A rate as a schedule: each reservation of some bytes moves the time the next bytes may go
/// by what these take at the rate. The rate may change (a cluster's share); reservations
/// already made keep their time.
final class RateSchedule: Sendable {
    private let schedule: Mutex<(bytesPerSecond: Int, next: ContinuousClock.Instant?)>

    init(bytesPerSecond: Int) {
        schedule = Mutex((max(1, bytesPerSecond), nil))
    }

    var bytesPerSecond: Int { schedule.withLock { $0.bytesPerSecond } }

    func setRate(_ bytesPerSecond: Int) {
        schedule.withLock { $0.bytesPerSecond = max(1, bytesPerSecond) }
    }

    /// Counts `bytes` as sent; returns when the bytes after them may be read.
    func reserve(_ bytes: Int) -> ContinuousClock.Instant {
        schedule.withLock { schedule in
            let now = ContinuousClock.now
            let start = max(schedule.next ?? now, now)
            let due = start + .nanoseconds(Int64(bytes) * 1_000_000_000 / Int64(schedule.bytesPerSecond))
            schedule.next = due
            return due
        }
    }
}

/// The relays under way on each of the other servers sharing the directory, as each last
/// told (``ClusterMessage/relayLoad(server:active:)``); a count not renewed in time is
/// dropped (its server died, or stopped relaying and its last word was lost).
struct ClusterRelayLoad {
    private var counts: [String: (active: Int, until: NIODeadline)] = [:]

    /// How long a server's count holds: it renews it every ``RelayHub/loadInterval`` while it relays.
    static let lifetime = TimeAmount.seconds(3)

    mutating func record(_ active: Int, of server: String, now: NIODeadline) {
        counts[server] = active > 0 ? (active, now + Self.lifetime) : nil
    }

    /// The relays under way on the other servers.
    mutating func others(now: NIODeadline) -> Int {
        counts = counts.filter { $0.value.until > now }
        return counts.values.reduce(0) { $0 + $1.active }
    }

    /// This server's share of `limit` when it relays `mine` transfers: all of it alone, else in
    /// proportion to its transfers among all the cluster's (so that each relayed transfer gets
    /// about the same, wherever it is paired, and the sum holds to the limit).
    static func share(of limit: Int, mine: Int, others: Int) -> Int {
        guard mine > 0, others > 0 else { return limit }
        return max(1, Int(Int64(limit) * Int64(mine) / Int64(mine + others)))
    }
}

/// The relays being set up and under way. A relay is asked for by the downloader over its
/// control connection (`RELAY`); the server tells the owner (`RELAY_TO`), and each side opens
/// a connection of its own to the server with a `RELAY` request carrying the token. When both
/// have come, each is answered 0 and from then on the server copies the bytes of one to the
/// other, at most at the relay's rate, until either side closes.
final class RelayHub: Sendable {
    let settings: RelaySettings
    private let total: RateSchedule
    private let logger: Logger
    private let bytes: Counter
    private let started: Counter
    private let activeGauge: Gauge

    /// How a side's `RELAY` ends: relaying to `partner`, carried to the server where the other
    /// side waits (with several servers), or refused with a code.
    enum Outcome: Sendable {
        case relaying(partner: any Channel, limiter: RelayLimiter)
        case carry(to: String)
        case refused(ResultCode)
    }

    /// A side of a relay waiting for the other: its connection here and what to call once the
    /// other has come (or nobody did), or the server (its address) where it waits.
    enum Side: Sendable {
        case here(channel: any Channel, done: @Sendable (Outcome) -> Void)
        case elsewhere(address: String)
    }

    private struct State {
        var pending = TokenPairing<Side>(repeats: .isRefused)
        var active = 0
        /// The relays under way on the other servers sharing the directory.
        var cluster = ClusterRelayLoad()
        /// Relays each user takes part in (pending or active).
        var perUser: [String: Int] = [:]

        mutating func release(_ owner: String, _ downloader: String) {
            for user in Set([owner, downloader]) {
                let count = perUser[user, default: 1] - 1
                perUser[user] = count > 0 ? count : nil
            }
        }
    }

    private let state = Mutex(State())

    /// Where the timers of relays nobody joins run.
    private let timers: any EventLoop
    /// The start of every token made here (the server's id, which the servers sharing the
    /// directory pair a relay by).
    private let tokenPrefix: String

    init(
        settings: RelaySettings, metrics: DirectoryMetrics, logger: Logger,
        timers: any EventLoop = MultiThreadedEventLoopGroup.singleton.any(), tokenPrefix: String = ""
    ) {
        self.tokenPrefix = tokenPrefix
        self.settings = settings
        self.timers = timers
        total = RateSchedule(bytesPerSecond: settings.bytesPerSecond)
        (loadChanges, loadChanged) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.logger = logger
        bytes = Counter(label: "p2p_relay_bytes_total", factory: metrics.factory)
        started = Counter(label: "p2p_relays_total", factory: metrics.factory)
        activeGauge = Gauge(label: "p2p_relays_active", factory: metrics.factory)
    }

    /// A relay between `owner` and `downloader`: its token, or 2 when relaying is off or full.
    func create(owner: String, downloader: String) -> TokenGrant {
        guard settings.isEnabled else { return .refused(code: 2) }
        let token = tokenPrefix + ControlMessage.makeToken()
        let users = Set([owner, downloader])
        let expires = NIODeadline.now() + TimeAmount(settings.joinTimeout)
        let refusal = state.withLock { state -> String? in
            let others = state.cluster.others(now: .now())
            guard state.active + state.pending.count + others < settings.maxTransfers else {
                return "\(settings.maxTransfers) relays already"
            }
            if let busy = users.first(where: { state.perUser[$0, default: 0] >= settings.maxTransfersPerUser }) {
                return "\(busy) takes part in \(settings.maxTransfersPerUser) relays already"
            }
            state.pending.create(token: token, owner: owner, downloader: downloader, expires: expires)
            for user in users { state.perUser[user, default: 0] += 1 }
            return nil
        }
        if let refusal {
            logger.notice("RELAY for \(downloader) from \(owner) refused: \(refusal)")
            return .refused(code: 2)
        }
        forget(token, at: expires)
        return .granted(token: token)
    }

    /// How often a server relaying transfers tells the others how many (``ClusterRelayLoad``).
    static let loadInterval = Duration.seconds(1)

    /// Relays under way here.
    var active: Int { state.withLock { $0.active } }

    /// Yields whenever the count of relays under way here changes (the newest only), for the
    /// other servers sharing the directory to be told at once.
    let loadChanges: AsyncStream<Void>
    private let loadChanged: AsyncStream<Void>.Continuation

    /// `server` (another sharing the directory) relays `active` transfers: this server's share
    /// of the total rate follows.
    func load(of server: String, active: Int) {
        state.withLock { $0.cluster.record(active, of: server, now: .now()) }
        share()
    }

    /// Sets the total rate to this server's share of the limit (``ClusterRelayLoad/share(of:mine:others:)``).
    func share() {
        let (mine, others) = state.withLock { ($0.active, $0.cluster.others(now: .now())) }
        let rate = ClusterRelayLoad.share(of: settings.bytesPerSecond, mine: mine, others: others)
        if rate != total.bytesPerSecond {
            total.setRate(rate)
            logger.info(
                "RELAY: this server's share of the limit is \(rate) bytes/s (\(mine) relays here, \(others) elsewhere)")
        }
    }

    /// The total rate this server relays at now.
    var totalRate: Int { total.bytesPerSecond }

    /// Forgets the relay `token` at `deadline` if nobody completed it.
    private func forget(_ token: String, at deadline: NIODeadline) {
        timers.scheduleTask(deadline: deadline) { [self] in
            let expired = state.withLock { state -> TokenPairing<Side>.Expiry? in
                let expiry = state.pending.expire(token: token, now: .now())
                if case .pairingExpired(let stale, _) = expiry { state.release(stale.owner, stale.downloader) }
                return expiry
            }
            if case .pairingExpired(_, .here(_, let done)?) = expired { done(.refused(2)) }
        }
    }

    /// Whether the relay `token` is paired here (made here, or adopted).
    func pairs(_ token: String) -> Bool { state.withLock { $0.pending.contains(token) } }

    /// Takes on the pairing of another server's relay whose first side waits here
    /// (``ClusterMessage/relayWait(token:user:owner:downloader:)``): the relay's bounds were
    /// counted where it was made; its transfer is counted here once paired.
    func adopt(token: String, owner: String, downloader: String) {
        let expires = NIODeadline.now() + TimeAmount(settings.joinTimeout)
        let adopted = state.withLock { state -> Bool in
            guard !state.pending.contains(token) else { return false }
            state.pending.create(token: token, owner: owner, downloader: downloader, expires: expires)
            return true
        }
        if adopted { forget(token, at: expires) }
    }

    /// `user`'s side of this server's relay `token` came to another server, at `address`:
    /// where it is to go. The first side waits where it is; the second goes to the server of
    /// the first (here, or the one it waits at, which then pairs the relay).
    func arrivedElsewhere(token: String, user: String, address: String, here: String) -> ClusterMessage {
        state.withLock { state -> ClusterMessage in
            guard let pairing = state.pending.pairing(for: token), pairing.involves(user) else {
                return .relayRefused(token: token, user: user, code: 1)
            }
            guard let waiting = pairing.waiting else {
                _ = state.pending.arrive(
                    token: token, user: user, side: .elsewhere(address: address), givesUp: .distantFuture)
                return .relayWait(token: token, user: user, owner: pairing.owner, downloader: pairing.downloader)
            }
            guard waiting.user != user else { return .relayRefused(token: token, user: user, code: 1) }
            switch waiting.side {
            case .here:
                // It comes to this server, as a side arriving here, and is paired then.
                return .relayGo(token: token, user: user, address: here)
            case .elsewhere(let other):
                _ = state.pending.arrive(
                    token: token, user: user, side: .elsewhere(address: address), givesUp: .distantFuture)
                state.release(pairing.owner, pairing.downloader)
                return .relayGo(token: token, user: user, address: other)
            }
        }
    }

    /// `user`'s side of the relay `token` arrived on `channel`. `done` is called (on any
    /// thread) once the other side is there too, after the 0 has been written to this channel,
    /// or with the code to answer.
    func join(
        user: String, token: String, channel: any Channel, encoder: ReplyEncoder,
        done: @escaping @Sendable (Outcome) -> Void
    ) {
        enum Step {
            case unknown
            case wait
            case carry(to: String)
            case paired(
                partner: any Channel, partnerDone: @Sendable (Outcome) -> Void, owner: String, downloader: String)
        }
        // A waiting side waits as long as the relay may be joined.
        let side = Side.here(channel: channel, done: done)
        let step = state.withLock { state -> Step in
            switch state.pending.arrive(token: token, user: user, side: side, givesUp: .distantFuture) {
            case .refuse:
                return .unknown
            case .wait:
                return .wait
            case .pair(.elsewhere(let address), let pairing):
                // The other side waits on another server, which pairs the relay.
                state.release(pairing.owner, pairing.downloader)
                return .carry(to: address)
            case .pair(.here(let partner, let partnerDone), let pairing):
                state.active += 1
                return .paired(
                    partner: partner, partnerDone: partnerDone, owner: pairing.owner, downloader: pairing.downloader)
            }
        }
        switch step {
        case .unknown:
            done(.refused(1))
        case .wait:
            break
        case .carry(let address):
            done(.carry(to: address))
        case .paired(let partner, let partnerDone, let pendingOwner, let pendingDownloader):
            started.increment()
            activeGauge.record(state.withLock { $0.active })
            share()
            loadChanged.yield()
            // Both zeros are queued before either side's handler can forward a byte, so each
            // side reads its 0 before anything from the other.
            var zero = ByteBuffer()
            encoder.writeCode(.ok, into: &zero)
            partner.writeAndFlush(zero, promise: nil)
            channel.writeAndFlush(zero, promise: nil)
            let limiter = RelayLimiter(
                transfer: RateSchedule(bytesPerSecond: settings.perTransfer), total: total, hub: self,
                users: (pendingOwner, pendingDownloader), idleTimeout: settings.idleTimeout)
            logger.info("RELAY: \(user)'s transfer relayed (token \(token.prefix(8))...)")
            partnerDone(.relaying(partner: channel, limiter: limiter))
            done(.relaying(partner: partner, limiter: limiter))
        }
    }

    func relayed(_ count: Int) {
        bytes.increment(by: count)
    }

    func ended(bytes: Int, after duration: Duration, owner: String, downloader: String) {
        let active = state.withLock { state -> Int in
            state.active -= 1
            state.release(owner, downloader)
            return state.active
        }
        activeGauge.record(active)
        share()
        loadChanged.yield()
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        logger.info(
            """
            RELAY: a transfer ended: \(bytes) bytes in \(Int(seconds * 1000)) ms \
            (\(Int(Double(bytes) / max(seconds, 0.001))) bytes/s)
            """
        )
    }
}

/// The rates one relayed transfer is held to (its own and the server's total), shared by its
/// two directions, and its end, counted once.
final class RelayLimiter: Sendable {
    private let transfer: RateSchedule
    private let total: RateSchedule
    private let hub: RelayHub
    private let sides = Atomic<Int>(2)
    private let bytes = Atomic<Int>(0)
    private let started = ContinuousClock.now
    private let users: (owner: String, downloader: String)
    let idleTimeout: Duration
    /// When a byte last went through, either way (NIODeadline's uptime nanoseconds).
    private let lastByte = Atomic<UInt64>(NIODeadline.now().uptimeNanoseconds)

    init(
        transfer: RateSchedule, total: RateSchedule, hub: RelayHub, users: (owner: String, downloader: String),
        idleTimeout: Duration
    ) {
        self.transfer = transfer
        self.total = total
        self.hub = hub
        self.users = users
        self.idleTimeout = idleTimeout
    }

    func reserve(_ count: Int) -> ContinuousClock.Instant {
        hub.relayed(count)
        bytes.add(count, ordering: .relaxed)
        lastByte.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
        return max(transfer.reserve(count), total.reserve(count))
    }

    /// Whether no byte has gone through for the idle timeout.
    var isIdle: Bool {
        let idle = NIODeadline.now().uptimeNanoseconds &- lastByte.load(ordering: .relaxed)
        return Int64(clamping: idle) > idleTimeout.nanosecondsClamped
    }

    /// One side's connection ended; the relay is over when both have.
    func sideEnded() {
        if sides.subtract(1, ordering: .relaxed).newValue == 0 {
            hub.ended(
                bytes: bytes.load(ordering: .relaxed), after: ContinuousClock.now - started, owner: users.owner,
                downloader: users.downloader)
        }
    }
}

/// Copies what one side of a relay sends to the other (`partner`), at most at the relay's
/// rates: what is read waits in a queue and goes out on the rates' schedule, and more is read
/// only while little waits and the partner keeps up (its writability). (Pacing the writes, not
/// only the reads: at the end of its input a socket is read to its end at once, which would
/// send the last megabyte or so of the kernel's buffer unpaced.) A clean end of input is passed
/// on as a half-close once the queue is empty; a reset or an error as a reset at once, so that a
/// downloader can tell a transfer cut in the middle from a complete one.
final class RelayHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    /// Sent to a side's pipeline when its partner can take bytes again.
    struct Wake: Sendable {}

    /// Bytes waiting to be sent beyond which nothing more is read.
    static let queueLimit = 64 * 1024

    private let partner: any Channel
    /// The relay's rates and end; nil on a server that only carries a side to the server that
    /// pairs the relay (which holds it to its rates and cuts it when idle).
    private let limiter: RelayLimiter?
    private var queue = CircularBuffer<ByteBuffer>()
    private var queued = 0
    /// When the next bytes may go (nil: now).
    private var nextSend: ContinuousClock.Instant?
    private var pumpScheduled = false
    private var readRequested = false
    private var inputClosed = false
    private var outputClosed = false
    private var idleCheck: RepeatedTask?

    init(partner: any Channel, limiter: RelayLimiter?) {
        self.partner = partner
        self.limiter = limiter
    }

    func handlerAdded(context: ChannelHandlerContext) {
        try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        requestRead(context: context)
        guard let limiter else { return }
        // A relay nobody sends through gives its slot back (both sides are cut).
        let interval = TimeAmount.nanoseconds(max(50_000_000, limiter.idleTimeout.nanosecondsClamped / 4))
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleCheck = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let (handler, context) = loopBound.value
            guard limiter.isIdle else { return }
            handler.reset(handler.partner)
            handler.reset(context.channel)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        readRequested = false
        queued += bytes.readableBytes
        queue.append(bytes)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readRequested = false
        pump(context: context)
    }

    /// Sends what is due, schedules the rest, and reads more when there is room.
    private func pump(context: ChannelHandlerContext) {
        var wrote = false
        while let first = queue.first, (nextSend ?? .now) <= .now {
            queue.removeFirst()
            queued -= first.readableBytes
            partner.write(first, promise: nil)
            nextSend = limiter?.reserve(first.readableBytes)
            wrote = true
        }
        if wrote { partner.flush() }
        if !queue.isEmpty, !pumpScheduled, let due = nextSend {
            pumpScheduled = true
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .nanoseconds(max(0, (due - .now).nanosecondsClamped))) {
                let (handler, context) = loopBound.value
                handler.pumpScheduled = false
                handler.pump(context: context)
            }
        }
        if queue.isEmpty, inputClosed {
            partner.close(mode: .output, promise: nil)
            if outputClosed { context.close(promise: nil) }
            return
        }
        requestRead(context: context)
    }

    private func requestRead(context: ChannelHandlerContext) {
        guard !inputClosed, !readRequested, queued < Self.queueLimit, partner.isWritable else { return }
        readRequested = true
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner.pipeline.fireUserInboundEventTriggered(Wake()) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is Wake {
            requestRead(context: context)
        } else if let event = event as? ChannelEvent, case .inputClosed = event {
            inputClosed = true
            pump(context: context)
        } else if let event = event as? ChannelEvent, case .outputClosed = event {
            outputClosed = true
            if inputClosed, queue.isEmpty { context.close(promise: nil) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        reset(partner)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Gone without a clean end of its input (or before all of it was passed on): the other
        // side must see the cut.
        if inputClosed, queue.isEmpty { partner.close(promise: nil) } else { reset(partner) }
        idleCheck?.cancel()
        idleCheck = nil
        queue.removeAll()
        limiter?.sideEnded()
        context.fireChannelInactive()
    }

    private func reset(_ channel: any Channel) {
        (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

extension Duration {
    /// The duration in nanoseconds, clamped to Int64.
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        guard seconds < Int64.max / 1_000_000_000 else { return .max }
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
