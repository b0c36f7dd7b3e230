import Crypto
import Foundation
import P2PIdentity
import P2PProtocol
import Synchronization

/// The keyed sessions this server has opened (docs/PROTOCOL.md, "Keys"): who opened each, with
/// which key, the session's MAC key and the last counter seen. Opening one checks a signature;
/// every keyed request after that costs a MAC.
///
/// Sessions live in this server's memory only: after a restart, or at another server of a
/// cluster, a keyed request is answered ``KeyedStatus/unknownSession`` and the client opens the
/// session again there. Bounded: at most ``maxSessions`` in all (the least recently used go
/// first) and ``maxSessionsPerUser`` per user name (its oldest go), whoever opens them.
public final class KeyedSessions: Sendable {
    public static let maxSessions = 100_000
    public static let maxSessionsPerUser = 8

    struct Session {
        var user: String
        var publicKey: String
        var key: SymmetricKey
        var seen = ReplayWindow()
        var lastUsed: UInt64
    }

    struct State {
        var sessions: [String: Session] = [:]
        var byUser: [String: [String]] = [:]
        var clock: UInt64 = 0
    }

    private let state = Mutex(State())
    private let maxSessions: Int

    public init(maxSessions: Int = KeyedSessions.maxSessions) {
        self.maxSessions = maxSessions
    }

    /// What checking a keyed request found.
    public enum Verdict: Sendable, Hashable {
        /// Proven by the holder of this public key.
        case proven(key: String)
        case unknownSession
        case refused
    }

    /// Opens a session for `user` after checking its signature; `boundKey` is the key the user
    /// is bound to, if any (another key is refused with 1, nothing opened).
    public func open(
        user: String, publicKey: String, agreementKey: String, signature: String, dateTime: String, boundKey: String?
    ) -> IdentifyReply {
        guard KeyedSession.isPublicKey(publicKey) else { return .refused(3) }
        if let boundKey, boundKey != publicKey { return .refused(1) }
        guard
            KeyedSession.verify(
                signature: signature, publicKey: publicKey, user: user, agreementKey: agreementKey, dateTime: dateTime)
        else { return .refused(2) }
        var idBytes = [UInt8](repeating: 0, count: 16)
        for index in idBytes.indices { idBytes[index] = UInt8.random(in: .min ... .max) }
        let id = idBytes.map { String($0, radix: 16).leftPadded(to: 2) }.joined()
        let mine = Curve25519.KeyAgreement.PrivateKey()
        guard
            let key = KeyedSession.sessionKey(mine, theirs: agreementKey, session: id, user: user, publicKey: publicKey)
        else { return .refused(3) }
        state.withLock { state in
            state.clock += 1
            state.sessions[id] = Session(user: user, publicKey: publicKey, key: key, lastUsed: state.clock)
            var ids = state.byUser[user, default: []]
            ids.append(id)
            while ids.count > Self.maxSessionsPerUser { state.sessions[ids.removeFirst()] = nil }
            state.byUser[user] = ids
            if state.sessions.count > maxSessions { Self.evictLeastRecentlyUsed(&state, down: maxSessions * 9 / 10) }
        }
        return .opened(session: id, agreementKey: mine.publicKey.rawRepresentation.base64EncodedString())
    }

    /// Checks `request`'s proof: the session, the MAC, a counter not seen before
    /// (``ReplayWindow``), and the session's user.
    public func verify(_ request: Request) -> Verdict {
        guard let proof = request.proof else { return .refused }
        return state.withLock { state in
            guard var session = state.sessions[proof.session] else { return .unknownSession }
            guard session.user == request.user, KeyedSession.isValid(proof, for: request, key: session.key),
                session.seen.accept(proof.counter)
            else { return .refused }
            state.clock += 1
            session.lastUsed = state.clock
            state.sessions[proof.session] = session
            return .proven(key: session.publicKey)
        }
    }

    /// Forgets `user`'s sessions (it was unbound: the key they prove is no longer its own).
    public func forget(user: String) {
        state.withLock { state in
            for id in state.byUser.removeValue(forKey: user) ?? [] { state.sessions[id] = nil }
        }
    }

    var count: Int { state.withLock { $0.sessions.count } }

    private static func evictLeastRecentlyUsed(_ state: inout State, down target: Int) {
        let victims = state.sessions.sorted { $0.value.lastUsed < $1.value.lastUsed }.prefix(state.sessions.count - target)
        for (id, session) in victims {
            state.sessions[id] = nil
            state.byUser[session.user]?.removeAll { $0 == id }
            if state.byUser[session.user]?.isEmpty == true { state.byUser[session.user] = nil }
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// The counters a session has seen, as IPsec's anti-replay window keeps them (RFC 4303, 3.4.3):
/// the highest, and which of the 64 below it came. A client sends several requests at once, so
/// they may arrive out of order; a counter seen before, or 64 or more below the highest, is
/// refused.
struct ReplayWindow {
    private var highest: UInt64?
    /// Bit n: counter `highest - n` was seen.
    private var bits: UInt64 = 0

    mutating func accept(_ counter: UInt64) -> Bool {
        guard let top = highest else {
            highest = counter
            bits = 1
            return true
        }
        if counter > top {
            let shift = counter - top
            bits = shift >= 64 ? 1 : (bits << shift) | 1
            highest = counter
            return true
        }
        let offset = top - counter
        guard offset < 64, bits & (1 << offset) == 0 else { return false }
        bits |= 1 << offset
        return true
    }
}
