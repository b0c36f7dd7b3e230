import Crypto
import Foundation
import P2PProtocol

/// The cryptography of keyed sessions (docs/PROTOCOL.md, "Keys"), the same on both sides.
///
/// `IDENTIFY` carries the user's public key, a fresh X25519 key-agreement key and an Ed25519
/// signature over both (``signedBytes``). The server answers with a session id and its own
/// fresh agreement key; both sides derive the session key from the X25519 agreement with HKDF
/// (``sessionKey``). A replayed `IDENTIFY` gives nobody a usable session: the key needs the
/// agreement key's private half, which never leaves the client. Every keyed request then
/// carries an HMAC-SHA256 under that key: one signature checked per session, a MAC per request.
public enum KeyedSession {
    /// What the user's key signs in `IDENTIFY`.
    public static func signedBytes(user: String, publicKey: String, agreementKey: String, dateTime: String) -> [UInt8] {
        var bytes: [UInt8] = []
        for field in ["p2p identify v1", user, publicKey, agreementKey, dateTime] {
            bytes += field.utf8
            bytes.append(0)
        }
        return bytes
    }

    /// Whether `signature` (base64) is `publicKey`'s (base64) over the IDENTIFY's fields.
    public static func verify(
        signature: String, publicKey: String, user: String, agreementKey: String, dateTime: String
    ) -> Bool {
        guard let keyBytes = Data(base64Encoded: publicKey), let signatureBytes = Data(base64Encoded: signature),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: keyBytes)
        else { return false }
        return key.isValidSignature(
            signatureBytes,
            for: signedBytes(user: user, publicKey: publicKey, agreementKey: agreementKey, dateTime: dateTime))
    }

    /// The session's key, from one side's private agreement key and the other's public one.
    public static func sessionKey(
        _ mine: Curve25519.KeyAgreement.PrivateKey, theirs: String, user: String, publicKey: String
    ) -> SymmetricKey? {
        guard let raw = Data(base64Encoded: theirs),
            let other = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: raw),
            let secret = try? mine.sharedSecretFromKeyAgreement(with: other)
        else { return nil }
        var info = Array("p2p session v1".utf8)
        for field in [user, publicKey] {
            info.append(0)
            info += field.utf8
        }
        return secret.hkdfDerivedSymmetricKey(
            using: SHA256.self, salt: [UInt8](), sharedInfo: info, outputByteCount: 32)
    }

    /// The MAC (base64) of `request` as the `counter`th request of `session`.
    public static func mac(_ request: Request, session: String, counter: UInt64, key: SymmetricKey) -> String {
        let bytes = KeyedRequest.authenticatedBytes(session: session, counter: counter, request: request)
        return Data(HMAC<SHA256>.authenticationCode(for: bytes, using: key)).base64EncodedString()
    }

    /// Whether `proof`'s MAC holds for `request` (compared in constant time).
    public static func isValid(_ proof: RequestProof, for request: Request, key: SymmetricKey) -> Bool {
        guard let code = Data(base64Encoded: proof.mac), code.count == 32 else { return false }
        let bytes = KeyedRequest.authenticatedBytes(session: proof.session, counter: proof.counter, request: request)
        return HMAC<SHA256>.isValidAuthenticationCode(code, authenticating: bytes, using: key)
    }

    /// A well-formed public key (base64 of an Ed25519 key).
    public static func isPublicKey(_ text: String) -> Bool {
        guard text.utf8.count == 44, let raw = Data(base64Encoded: text) else { return false }
        return (try? Curve25519.Signing.PublicKey(rawRepresentation: raw)) != nil
    }
}
