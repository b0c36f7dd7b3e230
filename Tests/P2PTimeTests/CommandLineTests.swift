import Foundation
import P2PTestSupport
import P2PTimeClient
import Testing

/// What the programs say on their command line, run as a person runs them.
@Suite struct CommandLineTests {
    @Test func timeServiceOnABusyPortNamesTheAddress() async throws {
        let first = try await TimeProcess()
        defer { Task { await first.stop() } }
        let second = try ChildProcess(builtProduct("p2p-time"), ["--port", String(first.port)])
        let status = try await second.waitForExit()
        #expect(status != 0)
        let output = (second.stdoutLines + second.stderrLines).joined(separator: "\n")
        #expect(output.contains("cannot listen on 127.0.0.1:\(first.port): Address already in use"), "\(output)")
        #expect(!output.contains("bind(descriptor"), "\(output)")
    }

    @Test func timeServiceLogsRequestsOnlyWhenAsked() async throws {
        let quiet = try await TimeProcess()
        let verbose = try await TimeProcess(arguments: ["--access-log"])
        for time in [quiet, verbose] {
            #expect(try await !TimeServiceClient(url: time.url, method: .plain).currentDateTime().isEmpty)
        }
        try await verbose.process.waitForLine { $0.contains("GET /time 200") }
        await quiet.stop()
        await verbose.stop()
        #expect(!quiet.process.stdoutLines.contains { $0.contains("GET /time") }, "\(quiet.process.stdoutLines)")
    }

    @Test func clientNamesAnUnknownOptionFirst() async throws {
        let client = try ChildProcess(builtProduct("p2p-client"), ["--bogus"])
        client.closeInput()
        #expect(try await client.waitForExit() != 0)
        let output = client.stderrLines.joined(separator: "\n")
        #expect(output.contains("Unknown option '--bogus'"), "\(output)")
        #expect(client.stderrLines.count <= 4, "a short message, not the whole help: \(output)")

        let missing = try ChildProcess(builtProduct("p2p-client"), ["-p", "4242"])
        missing.closeInput()
        #expect(try await missing.waitForExit() != 0)
        #expect(missing.stderrLines.joined().contains("Missing expected argument '--server <server>'"))
    }
}
