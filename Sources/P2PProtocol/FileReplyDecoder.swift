import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// What was wrong with a serving peer's answer to GET_FILE.
public enum FileReplyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The connection ended before a result code.
    case noReply
    /// A first byte that is neither a raw code (0x00-0x09) nor an ASCII digit.
    case invalidResultCode(UInt8)
    /// A size-prefixed reply whose size is not a decimal number of at most 19 digits.
    case invalidSize(String)
    /// A size-prefixed reply that ended before the announced size.
    case cut(expected: Int64, received: Int64)

    public var description: String {
        switch self {
        case .noReply: return "the peer closed without a result code"
        case .invalidResultCode(let byte): return "invalid result code byte 0x\(String(byte, radix: 16))"
        case .invalidSize(let text): return "invalid file size \"\(text.prefix(40))\""
        case .cut(let expected, let received): return "the peer announced \(expected) bytes and sent \(received)"
        }
    }
}

/// Reads a serving peer's answer to `GET_FILE`, whichever of the framings that implementations
/// of this protocol use (docs/PROTOCOL.md, "How owners frame the file"), told apart by the
/// bytes themselves:
///
/// | the owner sends | framing |
/// |---|---|
/// | `00`, then the bytes until it closes | ``Framing/rawCodeUntilClose`` |
/// | `30 00`, the bytes until it closes (a last NUL, none before: a C string's end) | ``Framing/digitNULUntilClose`` |
/// | `30`, decimal digits, `00`, exactly that many bytes | ``Framing/sizePrefixed(_:)`` |
/// | `30` then anything but a digit or NUL, the bytes until it closes | ``Framing/digitUntilClose`` |
///
/// `01`/`02` or `31`/`32` first: no such file, other error. The content is handed on as it
/// arrives; only the last byte is held back (for the C-string rule), so memory stays flat.
public struct FileReplyDecoder: Sendable {
    public enum Framing: Sendable, Hashable, CustomStringConvertible {
        /// The code as a raw byte, then the bytes until close.
        case rawCodeUntilClose
        /// The code as a lone ASCII digit, then the bytes until close.
        case digitUntilClose
        /// `0` NUL, then the bytes until close; a C-string owner ends text with one NUL.
        case digitNULUntilClose
        /// `0`, the size in decimal, NUL, exactly that many bytes.
        case sizePrefixed(Int64)

        public var description: String {
            switch self {
            case .rawCodeUntilClose: return "code as a raw byte, content until close"
            case .digitUntilClose: return "code as a digit, content until close"
            case .digitNULUntilClose: return "code as a digit and NUL, content until close"
            case .sizePrefixed(let size): return "code, size (\(size)) and exactly that many bytes"
            }
        }
    }

    /// Where the reply stands after the bytes fed so far.
    public enum Status: Sendable, Hashable {
        case needMore
        /// The peer answered a code other than 0: no file follows.
        case refused(ResultCode)
        /// Every byte of the file has arrived (size-prefixed only: other framings end at close).
        case complete
    }

    private enum State: Sendable {
        case awaitingCode
        /// `0` read: the next byte tells the framing.
        case afterZeroDigit
        case readingSize(String)
        case content
        case complete
        case refused(ResultCode)
    }

    /// Digits of the largest 64-bit size.
    static let maxSizeDigits = 19

    private var state = State.awaitingCode
    /// How the owner frames the file, once known.
    public private(set) var framing: Framing?
    /// Content bytes handed on so far.
    public private(set) var received: Int64 = 0
    /// Bytes still due (size-prefixed).
    private var remaining: Int64 = 0
    /// The last byte seen (C-string framing): written once another follows.
    private var held: UInt8?
    /// Whether a NUL was seen in the content before the held byte.
    private var sawNUL = false

    public init() {}

    /// Consumes `bytes`, appending the file's content that can be handed on to `content`.
    public mutating func decode(_ bytes: inout ByteBuffer, into content: inout ByteBuffer) throws(FileReplyError)
        -> Status
    {
        while true {
            switch state {
            case .awaitingCode:
                guard let byte = bytes.readInteger(as: UInt8.self) else { return .needMore }
                switch byte {
                case 0:
                    start(.rawCodeUntilClose)
                case 1...9:
                    state = .refused(ResultCode(rawValue: byte)!)
                case UInt8(ascii: "0"):
                    state = .afterZeroDigit
                case UInt8(ascii: "1")...UInt8(ascii: "9"):
                    state = .refused(ResultCode(rawValue: byte - UInt8(ascii: "0"))!)
                default:
                    throw .invalidResultCode(byte)
                }
            case .afterZeroDigit:
                guard let byte = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) else { return .needMore }
                if byte == 0 {
                    bytes.moveReaderIndex(forwardBy: 1)
                    start(.digitNULUntilClose)
                } else if isDigit(byte) {
                    bytes.moveReaderIndex(forwardBy: 1)
                    state = .readingSize(String(UnicodeScalar(byte)))
                } else {
                    start(.digitUntilClose)
                }
            case .readingSize(var digits):
                guard let byte = bytes.readInteger(as: UInt8.self) else { return .needMore }
                if byte == 0 {
                    guard let size = Int64(digits) else { throw .invalidSize(digits) }
                    remaining = size
                    start(.sizePrefixed(size))
                    if size == 0 { state = .complete }
                } else {
                    digits.append(Character(UnicodeScalar(byte)))
                    guard isDigit(byte), digits.count <= Self.maxSizeDigits else { throw .invalidSize(digits) }
                    state = .readingSize(digits)
                }
            case .content:
                take(&bytes, into: &content)
                if case .complete = state { return .complete }
                return .needMore
            case .complete:
                // Bytes after the announced size are not the file's.
                bytes.moveReaderIndex(to: bytes.writerIndex)
                return .complete
            case .refused(let code):
                return .refused(code)
            }
        }
    }

    /// The peer closed: appends what was held back to `content`, or says why the file is not whole.
    /// A nonzero code stays a refusal (see ``decode(_:into:)``), not an error.
    public mutating func finish(into content: inout ByteBuffer) throws(FileReplyError) {
        switch state {
        case .awaitingCode:
            throw .noReply
        case .afterZeroDigit:
            // A lone `0` and nothing after it: an empty file.
            start(.digitUntilClose)
        case .readingSize(let digits):
            throw .invalidSize(digits)
        case .content:
            if case .sizePrefixed(let size) = framing {
                throw .cut(expected: size, received: received)
            }
            if let byte = held {
                held = nil
                // One NUL at the very end of NUL-free content: a C string's terminator.
                if !(byte == 0 && !sawNUL) {
                    content.writeInteger(byte)
                    received += 1
                }
            }
        case .complete, .refused:
            break
        }
    }

    private mutating func start(_ framing: Framing) {
        self.framing = framing
        state = .content
    }

    private func isDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    private mutating func take(_ bytes: inout ByteBuffer, into content: inout ByteBuffer) {
        guard bytes.readableBytes > 0 else { return }
        switch framing {
        case .sizePrefixed:
            let count = Int(min(Int64(bytes.readableBytes), remaining))
            var slice = bytes.readSlice(length: count)!
            content.writeBuffer(&slice)
            received += Int64(count)
            remaining -= Int64(count)
            if remaining == 0 {
                state = .complete
                bytes.moveReaderIndex(to: bytes.writerIndex)
            }
        case .digitNULUntilClose:
            // Everything but the last byte goes on; the last waits to see whether more follows.
            if let byte = held {
                content.writeInteger(byte)
                received += 1
                if byte == 0 { sawNUL = true }
            }
            var slice = bytes.readSlice(length: bytes.readableBytes - 1)!
            held = bytes.readInteger(as: UInt8.self)
            if !sawNUL {
                // memchr: a text file's every byte is looked at, at memory speed.
                sawNUL = slice.withUnsafeReadableBytes { $0.count > 0 && memchr($0.baseAddress!, 0, $0.count) != nil }
            }
            received += Int64(slice.readableBytes)
            content.writeBuffer(&slice)
        case .rawCodeUntilClose, .digitUntilClose, nil:
            received += Int64(bytes.readableBytes)
            content.writeBuffer(&bytes)
        }
    }
}
