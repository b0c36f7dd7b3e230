import Foundation
import Synchronization

/// Serializes process launches in this test process.
let launchLock = NSLock()

/// The lines a child printed so far, and the unfinished last line of each stream.
final class OutputLines: Sendable {
    private let state = Mutex<(stdout: [String], stderr: [String], partial: [String: String])>(([], [], [:]))

    func withLock<R>(_ body: (inout (stdout: [String], stderr: [String], partial: [String: String])) -> R) -> R {
        state.withLock { body(&$0) }
    }
}

/// A program of this system run as a separate process, with its output collected line by line.
public final class ChildProcess: Sendable {
    public let name: String
    private let process: Process
    private let stdinPipe: Pipe
    private let output = OutputLines()

    /// Starts `executable` with `arguments` in `directory` (the current one by default).
    public init(
        _ executable: String,
        _ arguments: [String],
        directory: String? = nil,
        environment: [String: String]? = nil
    ) throws {
        name = (executable as NSString).lastPathComponent
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe()
        let err = Pipe()
        stdinPipe = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = stdinPipe
        for (pipe, isStdout) in [(out, true), (err, false)] {
            pipe.fileHandleForReading.readabilityHandler = { [output] handle in
                let data = handle.availableData
                let key = isStdout ? "out" : "err"
                output.withLock { state in
                    if data.isEmpty {
                        handle.readabilityHandler = nil
                        if let rest = state.partial[key], !rest.isEmpty {
                            if isStdout { state.stdout.append(rest) } else { state.stderr.append(rest) }
                        }
                        state.partial[key] = ""
                        return
                    }
                    var text = (state.partial[key] ?? "") + String(decoding: data, as: UTF8.self)
                    while let newline = text.firstIndex(of: "\n") {
                        let line = String(text[..<newline])
                        if isStdout { state.stdout.append(line) } else { state.stderr.append(line) }
                        text = String(text[text.index(after: newline)...])
                    }
                    state.partial[key] = text
                }
            }
        }
        // Foundation's Process.run() is not safe to call from several threads at once on
        // Linux (it crashed in memcpy here): launches are serialized.
        try launchLock.withLock { try process.run() }
    }

    deinit {
        // Never leave a program running after its test.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }
    public var stdoutLines: [String] { output.withLock { $0.stdout } }
    public var stderrLines: [String] { output.withLock { $0.stderr } }

    /// Waits until a stdout line satisfies `predicate` and returns it.
    @discardableResult
    public func waitForLine(
        timeout: Double = 20,
        where predicate: @escaping (String) -> Bool
    ) async throws -> String {
        var found: String?
        try await waitUntil("a line from \(name) (stdout so far: \(stdoutLines.suffix(5)), stderr: \(stderrLines.suffix(5)))", timeout: timeout) {
            found = stdoutLines.first(where: predicate)
            return found != nil || !isRunning
        }
        guard let found else {
            throw DeadlineExceeded(what: "\(name) exited early; stderr: \(stderrLines.suffix(10))")
        }
        return found
    }

    /// Writes `text` to the process's standard input.
    public func write(_ text: String) {
        try? stdinPipe.fileHandleForWriting.write(contentsOf: Data(text.utf8))
    }

    /// Closes the process's standard input (end of input).
    public func closeInput() {
        try? stdinPipe.fileHandleForWriting.close()
    }

    public func signal(_ signal: Int32) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Waits for the process to exit and returns its status.
    @discardableResult
    public func waitForExit(timeout: Double = 20) async throws -> Int32 {
        try await waitUntil("\(name) to exit", timeout: timeout) { !process.isRunning }
        // Let the pipes deliver the last output.
        try? await waitUntil("\(name) output to close", timeout: 2) {
            output.withLock { ($0.partial["out"] ?? "x").isEmpty && ($0.partial["err"] ?? "x").isEmpty }
        }
        return process.terminationStatus
    }

    /// SIGTERM, then SIGKILL if it does not exit within `grace` seconds.
    public func stop(grace: Double = 10) async {
        signal(SIGTERM)
        if (try? await waitForExit(timeout: grace)) == nil {
            signal(SIGKILL)
            _ = try? await waitForExit(timeout: 5)
        }
    }
}
