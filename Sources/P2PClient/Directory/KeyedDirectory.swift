import Crypto
import Foundation
import NIOCore
import P2PIdentity
import P2PProtocol

/// This client's keyed sessions with one directory server (docs/PROTOCOL.md, "Keys"): whether
/// the server announces `identity`, and per user the session opened with `IDENTIFY` (one
/// signature) and the counter of its requests. A server that does not announce it (any
/// third-party one) never receives anything but the plain requests of the spec.
actor KeyedDirectory {
    struct Session {
        var id: String
        var key: SymmetricKey
        var counter: UInt64 = 0
    }

    let identity: IdentityKey
    /// nil until the server has answered the capabilities query.
    private var serverHasIdentity: Bool?
    private var sessions: [String: Session] = [:]
    /// Sessions being opened, so that requests sent at once share one `IDENTIFY`.
    private var opening: [String: Task<Session, any Error>] = [:]

    init(identity: IdentityKey) {
        self.identity = identity
    }

    /// Whether requests for `user` are to be keyed: asks the server once (a plain
    /// `LIST_CONTENT` for the reserved capabilities name, as after CONNECT).
    func isKeyed(_ user: String, via directory: DirectoryClient, dateTime: String) async -> Bool {
        if let serverHasIdentity { return serverHasIdentity }
        let probe = Request(
            dateTime: dateTime, command: .listContent(user: user, owner: ReservedFileName.capabilities))
        guard let reply = try? await directory.sendPlain(probe) else { return false }
        let has: Bool
        if case .content(let capabilities) = reply {
            has = capabilities.contains(ServerCapabilities.identity)
        } else {
            has = false
        }
        serverHasIdentity = has
        return has
    }

    /// `request` with its proof, opening the user's session first if there is none.
    func prove(_ request: Request, via directory: DirectoryClient) async throws -> Request {
        let user = request.user
        var session: Session
        if let open = sessions[user] {
            session = open
        } else if let task = opening[user] {
            session = try await task.value
        } else {
            let identity = self.identity
            let task = Task {
                try await Self.open(user: user, identity: identity, dateTime: request.dateTime, via: directory)
            }
            opening[user] = task
            defer { opening[user] = nil }
            session = try await task.value
        }
        // Another request may have opened or advanced it meanwhile.
        if let current = sessions[user], current.id == session.id { session = current }
        session.counter += 1
        sessions[user] = session
        var proved = request
        proved.proof = RequestProof(
            session: session.id, counter: session.counter,
            mac: KeyedSession.mac(request, session: session.id, counter: session.counter, key: session.key))
        return proved
    }

    /// The server no longer knows the session `id` of `user` (it restarted, or it is another
    /// server of a cluster): the next request opens a new one.
    func forget(user: String, session id: String) {
        if sessions[user]?.id == id { sessions[user] = nil }
    }

    private static func open(
        user: String, identity: IdentityKey, dateTime: String, via directory: DirectoryClient
    ) async throws -> Session {
        let agreement = Curve25519.KeyAgreement.PrivateKey()
        let agreementKey = agreement.publicKey.rawRepresentation.base64EncodedString()
        let publicKey = identity.publicKeyText
        let signature = try identity.sign(
            KeyedSession.signedBytes(user: user, publicKey: publicKey, agreementKey: agreementKey, dateTime: dateTime))
        let reply = try await directory.identify(
            Request(
                dateTime: dateTime,
                command: .identify(user: user, publicKey: publicKey, agreementKey: agreementKey, signature: signature)))
        switch reply {
        case .opened(let id, let serverKey):
            guard
                let key = KeyedSession.sessionKey(agreement, theirs: serverKey, user: user, publicKey: publicKey)
            else { throw DirectoryClientError.keyRefused("the server's agreement key is malformed") }
            return Session(id: id, key: key)
        case .refused(1):
            throw DirectoryClientError.boundToAnotherKey(user: user, fingerprint: identity.fingerprint)
        case .refused(let code):
            throw DirectoryClientError.keyRefused("IDENTIFY answered \(code.rawValue)")
        }
    }
}
