import Foundation
import P2PTestSupport
import Testing

/// Issue "a directory that tells the truth", with real processes: a client killed with SIGKILL
/// leaves the directory through the server's peer checks, and its user can come back.
@Suite struct DeadClientTests {
    @Test func killedClientExpiresAndItsUserCanConnectAgain() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let time = try await TimeProcess()
        let server = try await ServerProcess(
            dataDirectory: folder.file("storage"),
            arguments: ["--no-oplog", "--peer-check-interval", "0.2", "--peer-check-failures", "2"])
        // One person's clients: carol's key is the same in all of them.
        let identity = folder.file("identity")
        func client(_ name: String) throws -> ClientProcess {
            let directory = folder.file(name)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            return try ClientProcess(
                serverPort: server.port, timeURL: time.url, directory: directory,
                extraArguments: ["--identity", identity])
        }
        let carol = try client("carol")
        #expect(try await carol.run("REGISTER carol") == "c> REGISTER OK")
        #expect(try await carol.run("CONNECT carol") == "c> CONNECT OK")
        let other = try client("other")
        #expect(try await other.run("REGISTER watcher") == "c> REGISTER OK")
        #expect(try await other.run("CONNECT watcher") == "c> CONNECT OK")

        // While carol's client lives, CONNECT carol elsewhere is refused, with a hint.
        let second = try client("second")
        #expect(try await second.run("CONNECT carol") == "c> USER ALREADY CONNECTED")
        try await waitUntil("the hint on stderr") {
            second.process.stderrLines.contains { $0.contains("DISCONNECT carol") }
        }

        carol.process.signal(SIGKILL)
        _ = try await carol.process.waitForExit()
        try await waitUntil("carol expired", timeout: 20) {
            server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE carol") }
        }
        // The living client went through the same rounds, took every check quietly, and stays.
        #expect(!server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE watcher") })
        #expect(
            other.process.stderrLines.allSatisfy { $0.hasPrefix("p2p-client: serving to other peers ") },
            "\(other.process.stderrLines)")
        #expect(try await second.run("CONNECT carol") == "c> CONNECT OK")
        _ = try await second.finish()
        _ = try await other.finish()
        await server.stop()
        await time.stop()
    }
}
