/// What was wrong with bytes received from a peer, or with a message about to be sent.
public enum ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Field `index` (0 is the operation name) grew past 255 bytes without a NUL; `length`
    /// is how many bytes it had when that was noticed.
    case fieldTooLong(index: Int, length: Int)
    /// Field `index` is not valid UTF-8.
    case invalidUTF8(index: Int)
    /// The first field names no operation.
    case unknownOperation(String)
    /// The input ended after `fieldsReceived` complete fields of a message that needs more.
    case truncated(operation: String?, fieldsReceived: Int)
    /// A field to be sent holds a NUL byte, which would split it on the wire.
    case fieldContainsNUL(index: Int)
    /// A result code byte that is neither a raw code (0x00-0x09) nor an ASCII digit.
    case invalidResultCode(UInt8)
    /// A list count that is not a decimal number in range.
    case invalidCount(String)
    /// A keyed request's counter (``RequestProof``) that is not a decimal number.
    case invalidCounter(String)

    public var description: String {
        switch self {
        case .fieldTooLong(let index, let length):
            return "field \(index) is longer than \(ProtocolLimits.maxFieldBytes) bytes (\(length) without NUL)"
        case .invalidUTF8(let index):
            return "field \(index) is not valid UTF-8"
        case .unknownOperation(let name):
            return "unknown operation \"\(name.prefix(40))\""
        case .truncated(let operation, let fieldsReceived):
            return "request \(operation ?? "(no operation)") ended after \(fieldsReceived) field(s)"
        case .fieldContainsNUL(let index):
            return "field \(index) contains a NUL byte"
        case .invalidResultCode(let byte):
            return "invalid result code byte 0x\(String(byte, radix: 16))"
        case .invalidCount(let text):
            return "invalid list count \"\(text.prefix(40))\""
        case .invalidCounter(let text):
            return "invalid keyed request counter \"\(text.prefix(40))\""
        }
    }
}
