import Foundation

/// The real operation-log server (`rpc/p2p-oplog`, built by `make oplog`), registered with the
/// real rpcbind, which must be running (`make test` starts it).
public final class OperationLogServer: Sendable {
    public let logFile: String
    public let process: ChildProcess

    /// Starts the server writing to `logFile` and waits until rpcbind knows it.
    public init(logFile: String, arguments: [String] = []) async throws {
        let binary = "\(packageRoot)/rpc/p2p-oplog"
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw SetupError("\(binary) is missing: run 'make oplog' (make test does)")
        }
        guard await Self.rpcbindIsRunning() else {
            throw SetupError("rpcbind is not running: start it with 'rpcbind' (make test does)")
        }
        self.logFile = logFile
        process = try ChildProcess(binary, ["--log-file", logFile] + arguments)
        try await waitUntil("p2p-oplog to register with rpcbind") { await Self.isRegistered() }
    }

    /// The lines printed so far (from its log file).
    public var lines: [String] {
        guard let text = try? String(contentsOfFile: logFile, encoding: .utf8) else { return [] }
        return text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
    }

    public func stop() async {
        await process.stop()
    }

    public func kill() async {
        process.signal(SIGKILL)
        _ = try? await process.waitForExit()
    }

    /// Whether `rpcinfo -t localhost 536871065 1` (program 0x20000099) answers.
    public static func isRegistered() async -> Bool {
        await ChildProcess.run("/usr/bin/rpcinfo", ["-t", "localhost", "536871065", "1"]) == 0
    }

    /// Whether rpcbind holds a registration of the program (answering or not).
    public static func hasRegistration() async -> Bool {
        guard let listing = try? ChildProcess("/usr/bin/rpcinfo", ["-p", "localhost"]) else { return false }
        _ = try? await listing.waitForExit()
        return listing.stdoutLines.contains { $0.contains("536871065") }
    }

    /// `rpc/p2p-oplog`, for starting more than one.
    public static var binary: String { "\(packageRoot)/rpc/p2p-oplog" }

    public static func rpcbindIsRunning() async -> Bool {
        await ChildProcess.run("/usr/bin/rpcinfo", ["-p", "localhost"]) == 0
    }
}

public struct SetupError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
