import Foundation

/// `p2p-server` as a separate process on 127.0.0.1 with a free port.
public final class ServerProcess: Sendable {
    public let process: ChildProcess
    public let port: Int
    public let dataDirectory: String

    /// Starts the server on `port` (0: a free one) and waits until it listens.
    public init(
        dataDirectory: String,
        port requestedPort: Int = 0,
        arguments: [String] = ["--no-oplog"],
        environment: [String: String]? = nil,
        host: String = "127.0.0.1",
        inside namespace: SimulatedInternet.Host? = nil
    ) async throws {
        self.dataDirectory = dataDirectory
        let (executable, commandLine) = SimulatedInternet.command(
            in: namespace, builtProduct("p2p-server"),
            ["--host", host, "-p", String(requestedPort), "--data-dir", dataDirectory] + arguments)
        process = try ChildProcess(executable, commandLine, environment: environment)
        let line = try await process.waitForLine { $0.hasPrefix("s> init server") }
        guard let port = line.split(separator: ":").last.flatMap({ Int($0) }) else {
            throw SetupError("cannot read the port from \(line)")
        }
        self.port = port
    }

    public func stop() async { await process.stop() }
}

/// `p2p-time` as a separate process on 127.0.0.1 with a free port.
public final class TimeProcess: Sendable {
    public let process: ChildProcess
    public let port: Int
    public let host: String

    public init(
        port requestedPort: Int = 0, arguments: [String] = [], host: String = "127.0.0.1",
        inside namespace: SimulatedInternet.Host? = nil
    ) async throws {
        self.host = host
        let (executable, commandLine) = SimulatedInternet.command(
            in: namespace, builtProduct("p2p-time"), ["--host", host, "--port", String(requestedPort)] + arguments)
        process = try ChildProcess(executable, commandLine)
        let line = try await process.waitForLine { $0.contains("listening on") }
        guard let port = line.split(separator: ":").last.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) })
        else { throw SetupError("cannot read the port from \(line)") }
        self.port = port
    }

    public var url: String { host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)" }

    public func stop() async { await process.stop() }
}

/// A `p2p-client` process driven through its standard input, as a script would.
public final class ClientProcess: Sendable {
    public let process: ChildProcess

    public init(
        serverPort: Int, timeURL: String, directory: String, extraArguments: [String] = [],
        serverHost: String = "127.0.0.1", inside namespace: SimulatedInternet.Host? = nil
    ) throws {
        let (executable, commandLine) = SimulatedInternet.command(
            in: namespace, builtProduct("p2p-client"),
            ["-s", serverHost, "-p", String(serverPort), "--time-service", timeURL] + extraArguments)
        // What the client remembers between runs (the names it published) and its key stay
        // beside the test's folder (removed with the test's temporary folder), not in it: tests
        // look at what the client's folder holds. A client per folder: a key per folder.
        let folder = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        process = try ChildProcess(
            executable, commandLine, directory: directory,
            environment: ["XDG_STATE_HOME": folder + ".p2p-state", "XDG_CONFIG_HOME": folder + ".p2p-state/config"])
    }

    /// Sends `commands`, one per line.
    public func send(_ commands: [String]) {
        process.write(commands.map { $0 + "\n" }.joined())
    }

    /// Waits for a stdout line equal to `line`, beyond the first `after` lines.
    public func waitFor(_ line: String, after: Int = 0, timeout: Double = 20) async throws {
        try await waitUntil("\(line) from p2p-client (so far: \(process.stdoutLines.suffix(5)))", timeout: timeout) {
            process.stdoutLines.dropFirst(after).contains(line)
        }
    }

    /// Sends one command and waits for its result line (the next line starting with `c> `).
    @discardableResult
    public func run(_ command: String, timeout: Double = 20) async throws -> String {
        let before = process.stdoutLines.count
        send([command])
        var result: String?
        try await waitUntil("the result of \(command)", timeout: timeout) {
            result = process.stdoutLines.dropFirst(before).first { $0.hasPrefix("c> ") }
            return result != nil
        }
        return result!
    }

    /// Closes stdin (end of input acts as QUIT) and returns everything it printed on stdout.
    /// Exit status 1 (some command failed) is the client's normal way to end a script in which
    /// a command failed; anything else is an error.
    public func finish() async throws -> [String] {
        try await finishWithStatus().lines
    }

    /// As `finish`, with the exit status (0: every command succeeded, 1: one failed).
    public func finishWithStatus() async throws -> (lines: [String], status: Int32) {
        process.closeInput()
        let status = try await process.waitForExit(timeout: 30)
        guard status == 0 || status == 1 else {
            throw SetupError("p2p-client exited with \(status); stderr: \(process.stderrLines.suffix(5))")
        }
        return (process.stdoutLines, status)
    }

    /// Runs a whole script in one client and returns its output.
    public static func run(
        _ commands: [String], serverPort: Int, timeURL: String, directory: String, extraArguments: [String] = []
    ) async throws -> [String] {
        let client = try ClientProcess(
            serverPort: serverPort, timeURL: timeURL, directory: directory, extraArguments: extraArguments)
        client.send(commands)
        return try await client.finish()
    }
}

/// A free TCP port on 127.0.0.1 for a program that must keep the same port across restarts.
/// It is taken below the kernel's ephemeral range (32768 and up here), so that servers other
/// tests start on port 0 cannot be given it in the meantime.
/// Never the same port twice in one test process: a test taking several ports before it
/// starts anything on them once got the same one twice (a CI run of `make run`'s test).
public func unusedPort() throws -> Int {
    for _ in 0..<200 {
        let candidate = Int.random(in: 20_000..<32_000)
        guard handedOutPorts.withLock({ $0.insert(candidate).inserted }) else { continue }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let bound = withLoopbackAddress(port: candidate) { bind(fd, $0, $1) }
        close(fd)
        if bound == 0 { return candidate }
    }
    throw SetupError("no free port found")
}

private let handedOutPorts = Locked(Set<Int>())

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
public func isListening(_ port: Int) -> Bool {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(descriptor) }
    return withLoopbackAddress(port: port) { connect(descriptor, $0, $1) } == 0
}

/// Calls `body` with the socket address 127.0.0.1:`port` and its length.
func withLoopbackAddress<R>(port: Int, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// A TCP socket bound to 127.0.0.1 on a port the system chooses, listening with `backlog`
/// when one is given: its descriptor and port.
public func loopbackSocket(listening backlog: Int32?) throws -> (descriptor: Int32, port: Int) {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
    }
    guard bound == 0, backlog.map({ listen(descriptor, $0) == 0 }) ?? true else {
        close(descriptor)
        throw SetupError("bind or listen failed")
    }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
    }
    return (descriptor, Int(UInt16(bigEndian: address.sin_port)))
}

/// A port on 127.0.0.1 that is bound but not listening for as long as this object lives:
/// connections to it are refused, and no other program can take it in the meantime (a port
/// that is merely free could be given to a server that another test starts).
public final class ClosedPort: Sendable {
    public let port: Int
    private let descriptor: Int32

    public init() throws {
        (descriptor, port) = try loopbackSocket(listening: nil)
    }

    deinit {
        close(descriptor)
    }
}

/// A port on 127.0.0.1 that listens but whose program never accepts: the kernel completes
/// connections to it (up to the backlog), as for a peer that is alive but slow to answer.
public final class SilentListener: Sendable {
    public let port: Int
    private let descriptor: Int32

    public init() throws {
        (descriptor, port) = try loopbackSocket(listening: 1024)
    }

    deinit {
        close(descriptor)
    }
}
