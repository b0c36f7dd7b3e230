/// A reply's result code, 0 to 9. What each value means depends on the operation
/// (PROTOCOL.md section 2); 0 always means success.
public struct ResultCode: RawRepresentable, Hashable, Sendable, ExpressibleByIntegerLiteral,
    CustomStringConvertible
{
    public let rawValue: UInt8

    public init?(rawValue: UInt8) {
        guard rawValue <= 9 else { return nil }
        self.rawValue = rawValue
    }

    public init(integerLiteral value: UInt8) {
        precondition(value <= 9, "result codes are single digits")
        self.rawValue = value
    }

    public static let ok: ResultCode = 0

    public var description: String { String(rawValue) }
}

/// How the server puts a result code on the wire (PROTOCOL.md section 3).
public enum ResultCodeEncoding: String, Sendable, CaseIterable {
    /// An ASCII digit followed by NUL: `30 00` for 0. What most existing peers send.
    case ascii
    /// One raw byte, `00` to `09`, for clients that read the statement literally.
    case byte
}
