import Crypto
import Foundation

/// The secret every request to the client's web face carries: 128 random bits in hex, made at
/// start or kept in a file (made with mode 0600 at first use).
public struct WebToken: Sendable, Equatable, CustomStringConvertible {
    public let value: String

    public init(value: String) {
        self.value = value
    }

    public static func random() -> WebToken {
        WebToken(value: SymmetricKey(size: .bits128).withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() })
    }

    public enum FileError: Error, CustomStringConvertible {
        case unreadable(String, String)
        case tooShort(String)
        case cannotCreate(String, String)

        public var description: String {
            switch self {
            case .unreadable(let path, let reason): "cannot read the web token in \(path): \(reason)"
            case .tooShort(let path): "the web token in \(path) is shorter than 16 characters"
            case .cannotCreate(let path, let reason): "cannot write a web token to \(path): \(reason)"
            }
        }
    }

    /// The token in `path` (its first line), or a new one written there when there is no file.
    public static func loadOrCreate(at path: String) throws(FileError) -> WebToken {
        if FileManager.default.fileExists(atPath: path) {
            let text: String
            do {
                text = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw .unreadable(path, "\(error.localizedDescription)")
            }
            let value = text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) }
            guard let value, value.count >= 16 else { throw .tooShort(path) }
            return WebToken(value: value)
        }
        let token = random()
        let created = FileManager.default.createFile(
            atPath: path, contents: Data((token.value + "\n").utf8), attributes: [.posixPermissions: 0o600])
        guard created else { throw .cannotCreate(path, "the file could not be created") }
        return token
    }

    /// Whether `candidate` is this token, in a time that does not depend on where they differ.
    func matches(_ candidate: Substring) -> Bool {
        let expected = Array(value.utf8)
        let given = Array(candidate.utf8)
        guard expected.count == given.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(expected, given) { difference |= a ^ b }
        return difference == 0
    }

    public var description: String { value }
}
