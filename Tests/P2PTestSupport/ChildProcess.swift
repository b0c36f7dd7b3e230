import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

// GNU extensions that the Glibc module does not import (they need _GNU_SOURCE).
private let gnuPipe2: @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32 = unsafeBitCast(
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pipe2"),
    to: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32).self)
private let gnuAddChdir:
    @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32 =
        unsafeBitCast(
            dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np"),
            to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32).self)

/// The lines a child printed so far, and the unfinished last line of each stream.
final class OutputLines: Sendable {
    private let state = Mutex<(stdout: [String], stderr: [String], partial: [String: String])>(([], [], [:]))
    /// How many of the two streams have reached end of file.
    private let ended = Atomic<Int>(0)

    func withLock<R>(_ body: (inout (stdout: [String], stderr: [String], partial: [String: String])) -> R) -> R {
        state.withLock { body(&$0) }
    }

    var bothEnded: Bool { ended.load(ordering: .acquiring) == 2 }

    /// Adds what was read from one stream (empty data: the stream ended).
    func append(_ data: Data, stdout isStdout: Bool) {
        let key = isStdout ? "out" : "err"
        withLock { state in
            if data.isEmpty {
                if let rest = state.partial[key], !rest.isEmpty {
                    if isStdout { state.stdout.append(rest) } else { state.stderr.append(rest) }
                }
                state.partial[key] = ""
                ended.add(1, ordering: .releasing)
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

/// A program of this system run as a separate process, with its output collected line by line.
///
/// Started with posix_spawn rather than Foundation's Process, whose launch crashed here when
/// other threads opened descriptors at the same time (it copies the list of open descriptors).
public final class ChildProcess: Sendable {
    public let name: String
    public let pid: pid_t
    private let stdinWriter: FileHandle
    private let output = OutputLines()
    /// The exit status once the process has ended (128 + n for signal n).
    private let exitStatus = Locked<Int32?>(nil)

    /// Starts `executable` with `arguments` in `directory` (the current one by default).
    public init(
        _ executable: String,
        _ arguments: [String],
        directory: String? = nil,
        environment: [String: String]? = nil
    ) throws {
        name = (executable as NSString).lastPathComponent
        var stdinPipe: [Int32] = [0, 0]
        var stdoutPipe: [Int32] = [0, 0]
        var stderrPipe: [Int32] = [0, 0]
        // O_CLOEXEC: no other child inherits these ends.
        guard gnuPipe2(&stdinPipe, O_CLOEXEC) == 0, gnuPipe2(&stdoutPipe, O_CLOEXEC) == 0,
            gnuPipe2(&stderrPipe, O_CLOEXEC) == 0
        else { throw SetupError("pipe2: \(String(cString: strerror(errno)))") }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdinPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
        if let directory { _ = gnuAddChdir(&actions, directory) }

        // Signals start with default handling and unblocked in the child.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigfillset(&defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        var variables = ProcessInfo.processInfo.environment
        for (key, value) in environment ?? [:] { variables[key] = value }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var child: pid_t = 0
        let status = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        close(stdinPipe[0])
        close(stdoutPipe[1])
        close(stderrPipe[1])
        guard status == 0 else {
            close(stdinPipe[1])
            close(stdoutPipe[0])
            close(stderrPipe[0])
            throw SetupError("cannot start \(executable): \(String(cString: strerror(status)))")
        }
        pid = child
        stdinWriter = FileHandle(fileDescriptor: stdinPipe[1], closeOnDealloc: true)

        let output = self.output
        for (descriptor, isStdout) in [(stdoutPipe[0], true), (stderrPipe[0], false)] {
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 65536)
                while true {
                    let count = read(descriptor, &buffer, buffer.count)
                    if count < 0 && errno == EINTR { continue }
                    if count <= 0 { break }
                    output.append(Data(buffer[0..<count]), stdout: isStdout)
                }
                output.append(Data(), stdout: isStdout)
                close(descriptor)
            }
        }
        let exitStatus = self.exitStatus
        let spawned = child
        Thread.detachNewThread {
            var status: Int32 = 0
            while waitpid(spawned, &status, 0) < 0 && errno == EINTR {}
            // WIFEXITED / WEXITSTATUS / WTERMSIG by hand: the macros are not imported.
            let signal = status & 0x7f
            exitStatus.withLock { $0 = signal == 0 ? (status >> 8) & 0xff : 128 + signal }
        }
    }

    deinit {
        // Never leave a program running after its test.
        if isRunning { kill(pid, SIGKILL) }
    }

    public var isRunning: Bool { exitStatus.withLock { $0 == nil } }
    public var stdoutLines: [String] { output.withLock { $0.stdout } }
    public var stderrLines: [String] { output.withLock { $0.stderr } }

    /// Waits until a stdout line satisfies `predicate` and returns it.
    @discardableResult
    public func waitForLine(
        timeout: Double = 20,
        where predicate: @escaping (String) -> Bool
    ) async throws -> String {
        var found: String?
        try await waitUntil(
            "a line from \(name) (stdout so far: \(stdoutLines.suffix(5)), stderr: \(stderrLines.suffix(5)))",
            timeout: timeout
        ) {
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
        try? stdinWriter.write(contentsOf: Data(text.utf8))
    }

    /// Closes the process's standard input (end of input).
    public func closeInput() {
        try? stdinWriter.close()
    }

    public func signal(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// Waits for the process to exit and its output to end; returns its exit status.
    @discardableResult
    public func waitForExit(timeout: Double = 20) async throws -> Int32 {
        try await waitUntil("\(name) to exit", timeout: timeout) { !isRunning }
        // The last lines may still be in the pipes: wait for their end of file too (a child
        // of the child could keep them open, hence the bound).
        try? await waitUntil("\(name) output to close", timeout: 5) { output.bothEnded }
        return exitStatus.withLock { $0 ?? -1 }
    }

    /// SIGTERM, then SIGKILL if it does not exit within `grace` seconds.
    public func stop(grace: Double = 10) async {
        signal(SIGTERM)
        if (try? await waitForExit(timeout: grace)) == nil {
            signal(SIGKILL)
            _ = try? await waitForExit(timeout: 5)
        }
    }

    /// Runs a command to completion, discarding its output; returns its exit status.
    public static func run(_ executable: String, _ arguments: [String], timeout: Double = 30) async -> Int32 {
        guard let process = try? ChildProcess(executable, arguments) else { return -1 }
        return (try? await process.waitForExit(timeout: timeout)) ?? -1
    }
}
