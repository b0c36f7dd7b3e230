/// Sizes fixed by the wire protocol (PROTOCOL.md section 1).
public enum ProtocolLimits {
    /// The most bytes a field may hold before its terminating NUL (the C peers use 256-byte buffers).
    public static let maxFieldBytes = 255
    /// The length of a date-time field, `DD/MM/YYYY HH:MM:SS`.
    public static let dateTimeLength = 19
    /// The most entries a list reply may announce; a larger count is treated as malformed.
    public static let maxListEntries = 1_000_000
}
