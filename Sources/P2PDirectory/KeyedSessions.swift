import Crypto
import Foundation
import P2PIdentity
import P2PProtocol
import Synchronization

/// The keyed sessions of this server (docs/PROTOCOL.md, "Keys"). Opening one checks a
/// signature; every keyed request after that costs a MAC.
///
/// A session's id is its ticket: the user (hashed), the public key and the session key, sealed
/// (ChaChaPoly) with a secret every server sharing the directory reads from the store. So any of
/// them verifies a session another one opened (behind a load balancer the next request goes to
/// another server) without a signature, and a restart forgets nothing. Each server keeps the
/// sessions it has seen, with their replay windows, at most ``maxSessions`` (the least recently
/// used go; a ticket seen again is opened again). A ticket is good for ``lifetime``; after that
/// the client opens a new session.
public final class KeyedSessions: Sendable {
    public static let maxSessions = 100_000
    public static let lifetime: Duration = .seconds(24 * 3600)

    struct Session {
        var userHash: [UInt8]
        var publicKey: String
        var key: SymmetricKey
        var issued: UInt64
        var seen = ReplayWindow()
        var lastUsed: UInt64
    }

    struct State {
        var sessions: [String: Session] = [:]
        var clock: UInt64 = 0
    }

    private let state = Mutex(State())
    private let maxSessions: Int
    private let secret: SymmetricKey

    /// `secret`: what tickets are sealed with (``DirectoryStore/sessionSecret()``: the same for
    /// every server of a directory).
    public init(secret: SymmetricKey, maxSessions: Int = KeyedSessions.maxSessions) {
        self.secret = secret
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
        guard KeyedSession.isPublicKey(publicKey), let raw = Data(base64Encoded: publicKey) else { return .refused(3) }
        // The key as it is stored and compared: base64 of its bytes, whatever spelling came.
        let canonical = raw.base64EncodedString()
        if let boundKey, boundKey != canonical { return .refused(1) }
        guard
            KeyedSession.verify(
                signature: signature, publicKey: publicKey, user: user, agreementKey: agreementKey, dateTime: dateTime)
        else { return .refused(2) }
        let mine = Curve25519.KeyAgreement.PrivateKey()
        let issued = UInt64(Date().timeIntervalSince1970)
        guard let key = KeyedSession.sessionKey(mine, theirs: agreementKey, user: user, publicKey: publicKey)
        else { return .refused(3) }
        let userHash = Self.userHash(user)
        var plain = userHash
        plain += raw
        key.withUnsafeBytes { plain += $0 }
        withUnsafeBytes(of: issued.bigEndian) { plain += $0 }
        guard let sealed = try? ChaChaPoly.seal(plain, using: secret).combined else { return .refused(3) }
        let id = sealed.base64EncodedString()
        remember(id, Session(userHash: userHash, publicKey: canonical, key: key, issued: issued, lastUsed: 0))
        return .opened(session: id, agreementKey: mine.publicKey.rawRepresentation.base64EncodedString())
    }

    /// Checks `request`'s proof: the session, the MAC, a counter not seen before
    /// (``ReplayWindow``), and the session's user.
    public func verify(_ request: Request) -> Verdict {
        guard let proof = request.proof else { return .refused }
        if state.withLock({ $0.sessions[proof.session] == nil }) {
            guard let session = unseal(proof.session) else { return .unknownSession }
            remember(proof.session, session)
        }
        return state.withLock { state in
            guard var session = state.sessions[proof.session] else { return .unknownSession }
            guard UInt64(Date().timeIntervalSince1970) < session.issued + UInt64(Self.lifetime.components.seconds)
            else {
                state.sessions[proof.session] = nil
                return .unknownSession
            }
            guard session.userHash == Self.userHash(request.user),
                KeyedSession.isValid(proof, for: request, key: session.key),
                session.seen.accept(proof.counter)
            else { return .refused }
            state.clock += 1
            session.lastUsed = state.clock
            state.sessions[proof.session] = session
            return .proven(key: session.publicKey)
        }
    }

    var count: Int { state.withLock { $0.sessions.count } }

    private func unseal(_ id: String) -> Session? {
        guard id.utf8.count < 200, let combined = Data(base64Encoded: id),
            let box = try? ChaChaPoly.SealedBox(combined: combined),
            let plain = try? ChaChaPoly.open(box, using: secret), plain.count == 16 + 32 + 32 + 8
        else { return nil }
        let bytes = Array(plain)
        let issued = bytes[80..<88].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return Session(
            userHash: Array(bytes[0..<16]), publicKey: Data(bytes[16..<48]).base64EncodedString(),
            key: SymmetricKey(data: bytes[48..<80]), issued: issued, lastUsed: 0)
    }

    private func remember(_ id: String, _ session: Session) {
        state.withLock { state in
            state.clock += 1
            var session = session
            session.lastUsed = state.clock
            state.sessions[id] = session
            if state.sessions.count > maxSessions { Self.evictLeastRecentlyUsed(&state, down: maxSessions * 9 / 10) }
        }
    }

    private static func userHash(_ user: String) -> [UInt8] { Array(SHA256.hash(data: Array(user.utf8)).prefix(16)) }

    private static func evictLeastRecentlyUsed(_ state: inout State, down target: Int) {
        let victims = state.sessions.sorted { $0.value.lastUsed < $1.value.lastUsed }.prefix(
            state.sessions.count - target)
        for (id, _) in victims { state.sessions[id] = nil }
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
