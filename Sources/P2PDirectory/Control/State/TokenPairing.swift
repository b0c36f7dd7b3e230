import NIOCore

/// The pairing of two connections by a token, as hole punches (`RENDEZVOUS`) and relays
/// (`RELAY`) both need it: the server hands a downloader and an owner one token; each then comes
/// on a connection of its own; the first to come waits, the second pairs them; a pairing nobody
/// completes expires. A plain value: no locks, no clock, no I/O. Its owner keeps it behind a
/// lock, passes the time in, and carries out what each event returns (answer a side, start
/// relaying). `Side` is what a waiting side leaves behind to be answered later.
struct TokenPairing<Side> {
    /// One pairing: its two users, until when it may be completed, and the side waiting.
    struct Pairing {
        let owner: String
        let downloader: String
        let expires: NIODeadline
        fileprivate(set) var waiting: Waiting?

        func involves(_ user: String) -> Bool { owner == user || downloader == user }
    }

    struct Waiting {
        let user: String
        let side: Side
        /// When this side stops waiting (the pairing itself may live on, for a later try).
        let givesUp: NIODeadline
    }

    /// What a side coming again while it already waits does.
    enum Repeat {
        /// The new connection takes the place of the old, which is refused (a client that
        /// retries its rendezvous).
        case replaces
        /// The new connection is refused and the old one goes on waiting (a relay's side is
        /// one connection: a second is somebody else's try).
        case isRefused
    }

    /// What `arrive` decided.
    enum Arrival {
        /// The first side: it waits. `replaced` is an earlier connection of the same side, to be
        /// refused.
        case wait(replaced: Side?)
        /// The second side: the pairing is complete (and gone from the table); `waiting` is the
        /// first side, to be answered together with this one.
        case pair(waiting: Side, Pairing)
        /// No such token, not this user's, or a repeated side that is refused.
        case refuse
    }

    /// What `expire` found past its time.
    enum Expiry {
        /// A pairing nobody completed in time, removed; its waiting side, if any, to be refused.
        case pairingExpired(Pairing, waiting: Side?)
        /// A side that waited its time; the pairing stays for another try.
        case gaveUp(Side)
    }

    let repeats: Repeat
    private var pairings: [String: Pairing] = [:]
    /// How many pairings each user is part of: the bounds are per user, and counting them by a
    /// scan of the table would make every request cost the table's size.
    private var perUser: [String: Int] = [:]

    init(repeats: Repeat) {
        self.repeats = repeats
    }

    /// Pairings waiting to be completed.
    var count: Int { pairings.count }

    /// Pairings `user` is part of.
    func pending(involving user: String) -> Int { perUser[user, default: 0] }

    /// Whether `token` is a pairing of the table.
    func contains(_ token: String) -> Bool { pairings[token] != nil }

    /// The pairing of `token`, to look at (who waits, where).
    func pairing(for token: String) -> Pairing? { pairings[token] }

    /// A new pairing between `owner` and `downloader` under `token`, to be completed by `expires`.
    /// The caller has checked its bounds (``pending(involving:)``, ``count``).
    mutating func create(token: String, owner: String, downloader: String, expires: NIODeadline) {
        precondition(pairings[token] == nil, "a token is made once")
        pairings[token] = Pairing(owner: owner, downloader: downloader, expires: expires, waiting: nil)
        for user in Set([owner, downloader]) { perUser[user, default: 0] += 1 }
    }

    /// `user`'s side came for `token`, leaving `side` to be answered; if it has to wait, it
    /// waits until `givesUp`.
    mutating func arrive(token: String, user: String, side: Side, givesUp: NIODeadline) -> Arrival {
        guard var pairing = pairings[token], pairing.involves(user) else { return .refuse }
        if let waiting = pairing.waiting, waiting.user != user {
            remove(token)
            pairing.waiting = nil
            return .pair(waiting: waiting.side, pairing)
        }
        let replaced = pairing.waiting?.side
        if replaced != nil, repeats == .isRefused { return .refuse }
        pairing.waiting = Waiting(user: user, side: side, givesUp: givesUp)
        pairings[token] = pairing
        return .wait(replaced: replaced)
    }

    /// What of `token`'s pairing has had its time at `now`: the pairing itself, or its waiting
    /// side; nil when nothing has (a side that came again later waits longer). The owner calls
    /// it from the timer it set for each deadline it was given.
    mutating func expire(token: String, now: NIODeadline) -> Expiry? {
        guard let pairing = pairings[token] else { return nil }
        if pairing.expires <= now {
            remove(token)
            return .pairingExpired(pairing, waiting: pairing.waiting?.side)
        }
        if let waiting = pairing.waiting, waiting.givesUp <= now {
            pairings[token]?.waiting = nil
            return .gaveUp(waiting.side)
        }
        return nil
    }

    private mutating func remove(_ token: String) {
        guard let pairing = pairings.removeValue(forKey: token) else { return }
        for user in Set([pairing.owner, pairing.downloader]) {
            let left = perUser[user, default: 1] - 1
            perUser[user] = left > 0 ? left : nil
        }
    }
}

extension TokenPairing: Sendable where Side: Sendable {}
extension TokenPairing.Pairing: Sendable where Side: Sendable {}
extension TokenPairing.Waiting: Sendable where Side: Sendable {}

/// The answer to a request that hands out a token (`REVERSE`, `PUNCH`, `RELAY`).
enum TokenGrant: Sendable, Equatable {
    case granted(token: String)
    /// The code to answer: 1 the owner has no control connection here, 2 the requester has none,
    /// or the request is over a bound.
    case refused(code: Int)

    /// The reply's code field.
    var code: Int {
        switch self {
        case .granted: 0
        case .refused(let code): code
        }
    }

    /// The reply's token field (empty when refused).
    var token: String {
        switch self {
        case .granted(let token): token
        case .refused: ""
        }
    }
}
