import CLibEdit
import P2PClient
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The prompt on a terminal, through libedit: arrows, Ctrl+A/E, Ctrl+R (search back through
/// history), Ctrl+L, history kept across runs in a file, and Tab completion of command names
/// (file names after the command). libedit also puts the terminal back while the client is
/// stopped (Ctrl+Z) and redraws the prompt and the line typed so far after `fg`.
///
/// libedit keeps global state and is not thread-safe: one editor per process, called from one
/// thread at a time (the reader thread).
final class LineEditor: @unchecked Sendable {
    static let historyLimit: Int32 = 1000

    private let historyFile: String?
    private var lastEntry: String?
    /// Whether a line is being read now (the prompt is on the screen).
    private let reading = Atomic<Bool>(false)

    init(historyFile: String?) {
        self.historyFile = historyFile
        p2p_editline_configure(UnsafePointer(strdup("p2p-client"))) { text, start, _ in
            // The first word is a command; later words are left to libedit's file-name completion.
            guard start == 0, let text else { return nil }
            return rl_completion_matches(text) { text, state in
                guard let text else { return nil }
                let typed = String(cString: text).uppercased()
                let matches = ConsoleCommand.names.filter { $0.hasPrefix(typed) }
                return Int(state) < matches.count ? strdup(matches[Int(state)]) : nil
            }
        }
        using_history()
        stifle_history(Self.historyLimit)
        if let historyFile { _ = read_history(historyFile) }
    }

    /// Shows `prompt` and reads one edited line; nil at end of input (Ctrl+D on an empty line).
    func readLine(prompt: String) -> String? {
        reading.store(true, ordering: .releasing)
        let raw = readline(prompt)
        reading.store(false, ordering: .releasing)
        guard let raw else { return nil }
        defer { free(raw) }
        let line = String(cString: raw)
        remember(line)
        return line
    }

    /// Draws the prompt and the line typed so far again, if a line is being read; after the
    /// client was stopped (Ctrl+Z) and continued (`fg`), where libedit itself only redraws at
    /// the next key.
    func redrawIfReading() {
        guard reading.load(ordering: .acquiring) else { return }
        rl_forced_update_display()
    }

    /// Adds a line to the history (not blank lines, not the same line twice in a row) and
    /// saves the history, so that nothing typed is lost when the client is killed.
    private func remember(_ line: String) {
        guard !line.allSatisfy(\.isWhitespace), line != lastEntry else { return }
        lastEntry = line
        _ = add_history(line)
        if let historyFile { _ = write_history(historyFile) }
    }
}

/// The terminal's settings at start, put back before the client exits whatever libedit was
/// doing at that moment (a signal may end the client in the middle of a read).
struct TerminalSettings: Sendable {
    private let saved: termios?

    init(descriptor: Int32 = STDIN_FILENO) {
        var settings = termios()
        saved = tcgetattr(descriptor, &settings) == 0 ? settings : nil
    }

    func restore(descriptor: Int32 = STDIN_FILENO) {
        guard var settings = saved else { return }
        _ = tcsetattr(descriptor, TCSANOW, &settings)
    }
}
