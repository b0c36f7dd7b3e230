import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A program running in a real terminal, as a person runs it: a private tmux server (its own
/// socket in a temporary folder) with one window, driven by keys and read back from the screen
/// as tmux renders it. The program runs under `sh`, which prints its exit status on the screen
/// (tmux itself was seen to miss the exit of a pane's program now and then: a zombie it never
/// reaped); the window stays after that, so that the last screen can be read. `close()` stops
/// the tmux server.
public final class TerminalSession: Sendable {
    private let socket: String
    private let folder: TemporaryDirectory
    private static let target = "p2p"

    /// Starts `command` (run by /bin/sh) in `directory` with `environment` added.
    public init(
        _ command: String, directory: String, environment: [String: String] = [:], width: Int = 160,
        height: Int = 50
    ) async throws {
        folder = try TemporaryDirectory()
        socket = folder.file("tmux.socket")
        let configuration = folder.file("tmux.conf")
        try "set -g remain-on-exit on\nset -g history-limit 5000\n".write(
            toFile: configuration, atomically: true, encoding: .utf8)
        let variables = environment.sorted { $0.key < $1.key }.flatMap { ["-e", "\($0.key)=\($0.value)"] }
        // `trap true INT`: Ctrl+C reaches the program (handlers are reset on exec) while sh
        // survives it to print the status.
        let wrapped = "trap true INT; \(command); echo \"\(Self.exitMarker)$?]\""
        let status = try await tmux(
            ["-f", configuration, "new-session", "-d", "-s", Self.target, "-x", String(width), "-y", String(height),
             "-c", directory] + variables + [wrapped])
        guard status.code == 0 else { throw SetupError("tmux new-session failed: \(status.output)") }
    }

    /// Types `text` literally.
    public func type(_ text: String) async throws {
        _ = try await tmux(["send-keys", "-t", Self.target, "-l", text])
    }

    /// Presses keys by tmux's names: `Enter`, `Left`, `Up`, `Tab`, `C-c`, `C-z`, `C-d`...
    public func press(_ keys: String...) async throws {
        _ = try await tmux(["send-keys", "-t", Self.target] + keys)
    }

    /// The screen's lines (long lines joined).
    public func screen() async throws -> [String] {
        let result = try await tmux(["capture-pane", "-p", "-J", "-t", Self.target])
        // Trailing blanks removed: from each line (the prompt `c> ` reads `c>`) and below the text.
        var lines = result.output.map { line in String(line.reversed().drop(while: { $0 == " " }).reversed()) }
        while let last = lines.last, last.isEmpty { lines.removeLast() }
        return lines
    }

    /// Waits until the screen satisfies `condition`; the error shows the screen.
    @discardableResult
    public func waitForScreen(
        _ what: String, timeout: Double = 20, _ condition: @escaping ([String]) -> Bool
    ) async throws -> [String] {
        var last: [String] = []
        do {
            try await waitUntil(what, timeout: timeout) {
                last = try await screen()
                return condition(last)
            }
        } catch {
            throw DeadlineExceeded(what: "\(what); screen:\n\(last.joined(separator: "\n"))")
        }
        return last
    }

    /// Waits until a screen line is exactly `line` (after `count` such lines were there).
    @discardableResult
    public func waitForLine(_ line: String, occurrences count: Int = 1, timeout: Double = 20) async throws -> [String] {
        try await waitForScreen("\(count)× \"\(line)\" on the screen", timeout: timeout) { screen in
            screen.filter { $0.trimmingCharacters(in: .whitespaces) == line }.count >= count
        }
    }

    /// Waits until `line` is on the screen and the prompt `prompt` is back below it: the
    /// program reads again (keys typed before that reach a terminal in cooked mode, as they
    /// would for a person typing ahead).
    @discardableResult
    public func waitForResult(_ line: String, prompt: String = "c>", timeout: Double = 20) async throws -> [String] {
        try await waitForScreen("\"\(line)\" and then the prompt", timeout: timeout) { screen in
            guard let index = screen.lastIndex(where: { $0.trimmingCharacters(in: .whitespaces) == line }) else {
                return false
            }
            return screen.last?.trimmingCharacters(in: .whitespaces) == prompt && index < screen.count - 1
        }
    }

    /// What `sh` prints before the program's exit status.
    static let exitMarker = "[program exited "

    /// Waits for the program to exit and returns its exit status.
    public func waitForExit(timeout: Double = 20) async throws -> Int32 {
        let screen = try await waitForScreen("the program in the terminal to exit", timeout: timeout) { screen in
            screen.contains { $0.hasPrefix(Self.exitMarker) }
        }
        let line = screen.last { $0.hasPrefix(Self.exitMarker) } ?? ""
        return Int32(line.dropFirst(Self.exitMarker.count).dropLast()) ?? -1
    }

    /// Stops the tmux server and whatever still runs in it.
    public func close() async {
        _ = try? await tmux(["kill-server"])
        folder.remove()
    }

    private func tmux(_ arguments: [String]) async throws -> (code: Int32, output: [String]) {
        let process = try ChildProcess("/usr/bin/tmux", ["-S", socket] + arguments)
        process.closeInput()
        let code = try await process.waitForExit(timeout: 10)
        return (code, process.stdoutLines + process.stderrLines)
    }

    /// Runs `body` with a session and always closes it.
    public static func with<T>(
        _ command: String, directory: String, environment: [String: String] = [:],
        _ body: (TerminalSession) async throws -> T
    ) async throws -> T {
        let session = try await TerminalSession(command, directory: directory, environment: environment)
        do {
            let result = try await body(session)
            await session.close()
            return result
        } catch {
            await session.close()
            throw error
        }
    }
}
