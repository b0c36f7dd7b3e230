/// Where the client's output goes: result lines on stdout (the caller adds nothing), reasons
/// for failures on stderr.
public struct ClientOutput: Sendable {
    public var line: @Sendable (String) -> Void
    public var diagnostic: @Sendable (String) -> Void
    /// A progress update that replaces the previous one, or nil to clear it (terminals only).
    public var progress: (@Sendable (String?) -> Void)?

    public init(
        line: @escaping @Sendable (String) -> Void,
        diagnostic: @escaping @Sendable (String) -> Void,
        progress: (@Sendable (String?) -> Void)? = nil
    ) {
        self.line = line
        self.diagnostic = diagnostic
        self.progress = progress
    }
}
