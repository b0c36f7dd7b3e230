/// Control characters in names and descriptions. The wire protocol lets a field hold any UTF-8,
/// but a user name or a file name is printed: on the directory server's console, by the
/// operation log, in every client's lists. A newline in one forges whole lines there, an
/// escape sequence rewrites the reader's terminal. Our server refuses such names
/// (``containsControlCharacters(_:)``); whatever reaches a terminal or a log from elsewhere is
/// printed through ``escaped(_:)``.
public enum ControlCharacters {
    /// Whether `text` holds a C0 control (U+0000-U+001F), DEL (U+007F) or a C1 control
    /// (U+0080-U+009F, which some terminals take as escape sequences too).
    public static func containsControlCharacters(_ text: some StringProtocol) -> Bool {
        var previous: UInt8 = 0
        for byte in text.utf8 {
            if byte < 0x20 || byte == 0x7F { return true }
            // U+0080-U+009F is C2 80 - C2 9F in UTF-8.
            if previous == 0xC2, byte >= 0x80, byte <= 0x9F { return true }
            previous = byte
        }
        return false
    }

    /// `text` with every control character written out: `\n`, `\r`, `\t`, else `\xHH` for a C0
    /// control or DEL and `\u{HH}` for a C1 control. Text without any comes back unchanged
    /// (the usual case, checked without copying).
    /// With `maxBytes`, the escaped text is cut (between characters) to fit that many UTF-8
    /// bytes: escaping makes a field longer, and the operation log takes at most 256 bytes.
    public static func escaped(_ text: String, maxBytes: Int = .max) -> String {
        guard containsControlCharacters(text) else { return text }
        var result = ""
        var bytes = 0
        result.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            let piece: String
            switch scalar.value {
            case 0x0A: piece = "\\n"
            case 0x0D: piece = "\\r"
            case 0x09: piece = "\\t"
            case 0x00..<0x20, 0x7F: piece = "\\x" + hex(scalar.value)
            case 0x80...0x9F: piece = "\\u{" + hex(scalar.value) + "}"
            default: piece = String(scalar)
            }
            bytes += piece.utf8.count
            if bytes > maxBytes { break }
            result += piece
        }
        return result
    }

    private static func hex(_ value: UInt32) -> String {
        let digits = Array("0123456789ABCDEF")
        return String([digits[Int(value >> 4) & 0xF], digits[Int(value) & 0xF]])
    }
}
