import Crypto
import Foundation
import NIOCore
import P2PIdentity
import P2PProtocol
import Testing

@testable import P2PDirectory

/// Keyed sessions without sockets: what `IDENTIFY` opens and what a keyed request must carry.
@Suite struct KeyedSessionsTests {
    static let dateTime = "07/12/2026 10:00:00"

    /// A client's side: its key, the session it opened and a counter.
    struct Client {
        let identity = IdentityKey()
        var session = ""
        var key: SymmetricKey?
        var counter: UInt64 = 0

        mutating func open(_ user: String, on sessions: KeyedSessions, boundKey: String? = nil) -> IdentifyReply {
            let agreement = Curve25519.KeyAgreement.PrivateKey()
            let agreementKey = agreement.publicKey.rawRepresentation.base64EncodedString()
            let signature = try! identity.sign(
                KeyedSession.signedBytes(
                    user: user, publicKey: identity.publicKeyText, agreementKey: agreementKey,
                    dateTime: KeyedSessionsTests.dateTime))
            let reply = sessions.open(
                user: user, publicKey: identity.publicKeyText, agreementKey: agreementKey, signature: signature,
                dateTime: KeyedSessionsTests.dateTime, boundKey: boundKey)
            if case .opened(let id, let serverKey) = reply {
                session = id
                key = KeyedSession.sessionKey(
                    agreement, theirs: serverKey, user: user, publicKey: identity.publicKeyText)
            }
            return reply
        }

        mutating func prove(_ command: Request.Command, counter chosen: UInt64? = nil) -> Request {
            counter += 1
            let used = chosen ?? counter
            var request = Request(dateTime: KeyedSessionsTests.dateTime, command: command)
            request.proof = RequestProof(
                session: session, counter: used,
                mac: KeyedSession.mac(request, session: session, counter: used, key: key!))
            return request
        }
    }

    @Test func aSessionProvesItsUsersRequestsOnceEach() throws {
        let secret = SymmetricKey(size: .bits256)
        let sessions = KeyedSessions(secret: secret)
        var alice = Client()
        guard case .opened = alice.open("alice", on: sessions) else {
            Issue.record("not opened")
            return
        }
        let first = alice.prove(.connect(user: "alice", port: "5000"))
        #expect(sessions.verify(first) == .proven(key: alice.identity.publicKeyText))
        // The same request again (a replay) is refused; so is another user's, and an altered one.
        #expect(sessions.verify(first) == .refused)
        #expect(sessions.verify(alice.prove(.disconnect(user: "bob"))) == .refused)
        var altered = alice.prove(.publish(user: "alice", fileName: "a", description: "d"))
        altered.command = .publish(user: "alice", fileName: "b", description: "d")
        #expect(sessions.verify(altered) == .refused)
        // Sent at once, requests may arrive out of order: within 64 of the highest, each once.
        let late = alice.prove(.delete(user: "alice", fileName: "x"))
        let early = alice.prove(.delete(user: "alice", fileName: "y"))
        #expect(sessions.verify(early) == .proven(key: alice.identity.publicKeyText))
        #expect(sessions.verify(late) == .proven(key: alice.identity.publicKeyText))
        #expect(sessions.verify(late) == .refused)
        alice.counter += 100
        #expect(sessions.verify(alice.prove(.disconnect(user: "alice"))) == .proven(key: alice.identity.publicKeyText))
        #expect(sessions.verify(alice.prove(.disconnect(user: "alice"), counter: 3)) == .refused, "too old")

        var unknown = first
        unknown.proof!.session = String(repeating: "A", count: 156)
        #expect(sessions.verify(unknown) == .unknownSession)

        // Another server of the same directory (the same secret) verifies the session without
        // a signature; one of another directory does not know it.
        let sibling = KeyedSessions(secret: secret)
        #expect(sibling.verify(alice.prove(.disconnect(user: "alice"))) == .proven(key: alice.identity.publicKeyText))
        let stranger = KeyedSessions(secret: SymmetricKey(size: .bits256))
        #expect(stranger.verify(alice.prove(.disconnect(user: "alice"))) == .unknownSession)
    }

    @Test func identifyRefusesAnotherKeyAndABadSignature() {
        let sessions = KeyedSessions(secret: SymmetricKey(size: .bits256))
        var alice = Client()
        let other = IdentityKey()
        #expect(alice.open("alice", on: sessions, boundKey: other.publicKeyText) == .refused(1))
        #expect(
            sessions.open(
                user: "alice", publicKey: alice.identity.publicKeyText,
                agreementKey: Curve25519.KeyAgreement.PrivateKey().publicKey.rawRepresentation.base64EncodedString(),
                signature: try! other.sign([1, 2, 3]), dateTime: Self.dateTime, boundKey: String?.none) == .refused(2))
        #expect(
            sessions.open(
                user: "alice", publicKey: "not a key", agreementKey: "x", signature: "y", dateTime: Self.dateTime,
                boundKey: String?.none) == .refused(3))
        #expect(sessions.count == 0)
    }

    /// The sessions a server remembers are bounded; one it forgot is opened again from its
    /// ticket, without a new IDENTIFY.
    @Test func rememberedSessionsAreBounded() {
        let sessions = KeyedSessions(secret: SymmetricKey(size: .bits256), maxSessions: 50)
        var first = Client()
        _ = first.open("user-first", on: sessions)
        for index in 0..<100 {
            var client = Client()
            _ = client.open("user\(index)", on: sessions)
        }
        #expect(sessions.count <= 50)
        #expect(
            sessions.verify(first.prove(.disconnect(user: "user-first"))) == .proven(key: first.identity.publicKeyText))
    }

    /// On the wire: the proof before the request, decoded back whole, however split.
    @Test func aKeyedRequestRoundTrips() throws {
        var request = Request(dateTime: Self.dateTime, command: .connect(user: "alice", port: "5000"))
        request.proof = RequestProof(session: "abcd", counter: 7, mac: "bWFj")
        var buffer = ByteBuffer()
        try RequestEncoder.encode(request, into: &buffer)
        #expect(String(buffer: buffer).hasPrefix("KEYED\0abcd\07\0bWFj\0CONNECT\0"))
        var decoder = RequestDecoder()
        var decoded: Request?
        for byte in buffer.readableBytesView {
            var one = ByteBuffer(bytes: [byte])
            if let request = try decoder.decode(&one) { decoded = request }
        }
        #expect(decoded == request)
        // Only changes and CONTROL may come keyed.
        var search = ByteBuffer()
        search.writeString("KEYED\0abcd\01\0bWFj\0SEARCH\0x\0alice\0q\0")
        var other = RequestDecoder()
        #expect(throws: ProtocolError.self) { _ = try other.decode(&search) }
    }
}
