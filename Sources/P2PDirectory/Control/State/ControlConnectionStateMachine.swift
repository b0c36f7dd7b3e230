import NIOCore
import P2PProtocol

/// What one control connection decides, as a plain value: when the client has been silent too
/// long, how many requests it may send (two allowances, refilled with time), why the connection
/// ended and whether its user goes offline with it. ``ControlConnectionHandler`` feeds it the
/// events (bytes decoded into messages, keepalive ticks, the server quiescing) with the time,
/// and carries out the actions; the tests drive it without sockets or a clock.
struct ControlConnectionStateMachine {
    /// What to do with a message from the client.
    enum Action: Equatable {
        /// Nothing to answer (a `PING`).
        case none
        /// One of the server's own messages, which a client has no business sending: ignored.
        case ignore
        /// Look up and answer `WHO` / `KEY`.
        case answerWho(id: String, user: String)
        case answerKey(id: String, user: String)
        /// Hand out a token for `owner` (the request is within its allowance).
        case reverse(id: String, owner: String)
        case punch(id: String, owner: String)
        case relay(id: String, owner: String)
        /// Answer at once without acting: the request is over the session's allowance.
        case overRate(ControlMessage)
        /// Close the connection (the reason is kept for ``end``).
        case close
    }

    /// What to do at a keepalive tick.
    enum Tick: Equatable {
        case ping
        case close
    }

    struct Limits {
        /// Requests that make another user's client act: at most `burst` at once, then
        /// `perSecond`.
        var requestBurst: Int
        var requestsPerSecond: Double
        /// `WHO` and `KEY`, which are cheap but not free: a client over `lookupsPerSecond` for
        /// longer than `lookupBurst` allows is closed.
        var lookupBurst: Double = 200
        var lookupsPerSecond: Double = 100
        /// Silent for this many keepalive intervals, the client is gone.
        var silentIntervals: Int64 = 3
    }

    let limits: Limits
    let keepalive: TimeAmount
    private var lastHeard: NIODeadline
    private var requestTokens: Double
    private var lookupTokens: Double
    private var counted: NIODeadline
    private(set) var endReason = "closed"
    /// False once the server is shutting down: the user stays connected in the directory, and
    /// its client opens a new control connection when the server is back (or, if it does not,
    /// the peer checks take it offline).
    private(set) var expiresOnEnd = true

    init(limits: Limits, keepalive: TimeAmount, now: NIODeadline) {
        self.limits = limits
        self.keepalive = keepalive
        lastHeard = now
        counted = now
        requestTokens = Double(limits.requestBurst)
        lookupTokens = limits.lookupBurst
    }

    /// Bytes arrived (whatever they hold, the client is alive).
    mutating func heard(now: NIODeadline) {
        lastHeard = now
    }

    /// The keepalive timer fired.
    mutating func tick(now: NIODeadline) -> Tick {
        let silence = keepalive * limits.silentIntervals
        guard now - lastHeard <= silence else {
            endReason = "was silent for \(silence.nanoseconds / 1_000_000) ms"
            return .close
        }
        return .ping
    }

    /// A message from the client.
    mutating func received(_ message: ControlMessage, now: NIODeadline) -> Action {
        refill(now: now)
        switch message {
        case .ping:
            return .none
        case .whoRequest(let id, let user):
            guard takeLookup() else {
                endReason = "sent WHO requests faster than \(Int(limits.lookupsPerSecond)) a second"
                return .close
            }
            return .answerWho(id: id, user: user)
        case .keyRequest(let id, let user):
            // Out of WHO's allowance: it is asked before every download too.
            guard takeLookup() else {
                endReason = "sent WHO and KEY requests faster than \(Int(limits.lookupsPerSecond)) a second"
                return .close
            }
            return .answerKey(id: id, user: user)
        case .reverseRequest(let id, let owner):
            return takeRequest() ? .reverse(id: id, owner: owner) : .overRate(.reverseReply(id: id, code: 2, token: ""))
        case .punchRequest(let id, let owner):
            return takeRequest() ? .punch(id: id, owner: owner) : .overRate(.punchReply(id: id, code: 2, token: ""))
        case .relayRequest(let id, let owner):
            return takeRequest() ? .relay(id: id, owner: owner) : .overRate(.relayReply(id: id, code: 2, token: ""))
        case .keepalive, .reachability, .whoReply, .keyReply, .reverseReply, .dial, .punchReply, .meet, .relayReply,
            .relayTo:
            return .ignore
        }
    }

    /// The client sent bytes that are no control message.
    mutating func invalid() -> Action {
        endReason = "sent something invalid"
        return .close
    }

    /// The connection failed.
    mutating func failed(_ error: any Error) -> Action {
        endReason = "failed: \(error)"
        return .close
    }

    /// The server is shutting down: close without taking the user offline.
    mutating func quiesce() -> Action {
        expiresOnEnd = false
        return .close
    }

    private mutating func refill(now: NIODeadline) {
        let seconds = Double((now - counted).nanoseconds) / 1e9
        counted = now
        requestTokens = min(Double(limits.requestBurst), requestTokens + seconds * limits.requestsPerSecond)
        lookupTokens = min(limits.lookupBurst, lookupTokens + seconds * limits.lookupsPerSecond)
    }

    private mutating func takeRequest() -> Bool {
        guard requestTokens >= 1 else { return false }
        requestTokens -= 1
        return true
    }

    private mutating func takeLookup() -> Bool {
        guard lookupTokens >= 1 else { return false }
        lookupTokens -= 1
        return true
    }
}
