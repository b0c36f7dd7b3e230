import Crypto
import Foundation

/// A client's identity: an Ed25519 key pair, made at first use and kept in a file only its
/// owner can read. The directory binds a user name to the public key; the fingerprint is how
/// people compare keys aloud.
public struct IdentityKey: Sendable {
    public let privateKey: Curve25519.Signing.PrivateKey

    public init(privateKey: Curve25519.Signing.PrivateKey = .init()) {
        self.privateKey = privateKey
    }

    /// The public key as it travels: base64 of its 32 bytes.
    public var publicKeyText: String { privateKey.publicKey.rawRepresentation.base64EncodedString() }

    public var fingerprint: String { Self.fingerprint(ofPublicKey: privateKey.publicKey.rawRepresentation) }

    public func sign(_ bytes: [UInt8]) throws -> String {
        try privateKey.signature(for: bytes).base64EncodedString()
    }

    /// The first 160 bits of the SHA-256 of the public key in base32 (RFC 4648, no padding),
    /// in eight groups of four: `MFRG-GZDF-...`. Short enough to read aloud, long enough that
    /// nobody makes a key with the same one.
    public static func fingerprint(ofPublicKey raw: Data) -> String {
        let digest = Array(SHA256.hash(data: raw).prefix(20))
        let text = base32(digest)
        return stride(from: 0, to: text.count, by: 4).map { start in
            let from = text.index(text.startIndex, offsetBy: start)
            return String(text[from..<text.index(from, offsetBy: 4)])
        }.joined(separator: "-")
    }

    /// The fingerprint of a public key in its wire form; nil when it is not one.
    public static func fingerprint(ofPublicKeyText text: String) -> String? {
        guard let raw = Data(base64Encoded: text), (try? Curve25519.Signing.PublicKey(rawRepresentation: raw)) != nil
        else { return nil }
        return fingerprint(ofPublicKey: raw)
    }

    static func base32(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        var out = ""
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 {
                out.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return out
    }
}

/// Why the identity file cannot be used.
public enum IdentityFileError: Error, CustomStringConvertible {
    case unreadable(String, String)
    case malformed(String)
    case tooOpen(String, mode: UInt16)
    case notWritten(String, String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read the identity \(path): \(reason)"
        case .malformed(let path): return "\(path) is not an identity file of this client"
        case .tooOpen(let path, let mode):
            return "the identity \(path) can be read by others (mode \(String(mode, radix: 8))): "
                + "chmod 600 it (and consider it known to them)"
        case .notWritten(let path, let reason): return "cannot write the identity \(path): \(reason)"
        }
    }
}

extension IdentityKey {
    static let header = "p2p-client identity v1 (Ed25519 private key, base64; keep it secret)"

    /// Where the identity lives unless told: `$XDG_CONFIG_HOME/p2p-client/identity`, or
    /// `~/.config/p2p-client/identity`.
    public static func defaultPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let base = environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? ((environment["HOME"] ?? NSHomeDirectory()) as NSString).appendingPathComponent(".config")
        return ((base as NSString).appendingPathComponent("p2p-client") as NSString).appendingPathComponent("identity")
    }

    /// Reads the identity at `path`, or makes one there (mode 0600, in a 0700 folder) when there
    /// is none. `created` says which.
    public static func loadOrCreate(at path: String) throws(IdentityFileError) -> (key: IdentityKey, created: Bool) {
        if FileManager.default.fileExists(atPath: path) { return (try load(from: path), false) }
        let key = IdentityKey()
        let folder = (path as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(
                atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw .notWritten(path, "\(error.localizedDescription)")
        }
        let text = header + "\n" + key.privateKey.rawRepresentation.base64EncodedString() + "\n"
        // O_EXCL: two clients starting at once do not overwrite each other's new key.
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            if errno == EEXIST { return (try load(from: path), false) }
            throw .notWritten(path, String(cString: strerror(errno)))
        }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced else { throw .notWritten(path, "short write") }
        return (key, true)
    }

    public static func load(from path: String) throws(IdentityFileError) -> IdentityKey {
        var status = stat()
        guard stat(path, &status) == 0 else { throw .unreadable(path, String(cString: strerror(errno))) }
        let mode = UInt16(status.st_mode & 0o777)
        guard mode & 0o077 == 0 else { throw .tooOpen(path, mode: mode) }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw .unreadable(path, error.localizedDescription)
        }
        let lines = text.split(separator: "\n")
        guard lines.count >= 2, lines[0] == header, let raw = Data(base64Encoded: String(lines[1])),
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
        else { throw .malformed(path) }
        return IdentityKey(privateKey: key)
    }
}
