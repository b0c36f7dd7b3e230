import Foundation
import Logging
import P2PDirectory
import P2POperationLog
import P2PRPCOperationLog
import P2PProtocol
import P2PTestSupport
import Testing

/// Everything that runs the real log server. Serialized: there is one rpcbind registration for
/// the program, so only one log server can run at a time.
@Suite(.serialized) struct LogServerSuites {}

/// The operation log with a real rpcbind and the real log server.
extension LogServerSuites {
    @Suite struct OperationLogTests {
        let logger: Logger = {
            var logger = Logger(label: "test-oplog")
            logger.logLevel = .critical
            return logger
        }()

        @Test func wrapperDeliversRecordsThatTheServerPrintsAsSpecified() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(logFile: folder.file("oplog.txt"))
            let log = RPCOperationLog(host: "localhost", logger: logger)
            log.start()
            log.submit(OperationRecord(user: "alice", operation: "REGISTER", dateTime: "25/11/2026 13:05:09"))
            log.submit(
                OperationRecord(
                    user: "alice", operation: "PUBLISH", fileName: "notes.txt", dateTime: "25/11/2026 13:05:11"))
            log.submit(
                OperationRecord(user: "bob", operation: "LIST_USERS", fileName: "", dateTime: "25/11/2026 13:05:12"))
            try await waitUntil("3 lines") { server.lines.count >= 3 }
            #expect(
                server.lines == [
                    "alice REGISTER 25/11/2026 13:05:09",
                    "alice PUBLISH notes.txt 25/11/2026 13:05:11",
                    "bob LIST_USERS 25/11/2026 13:05:12",
                ])
            // The same lines on its standard output.
            try await waitUntil("stdout lines") { server.process.stdoutLines.count >= 3 }
            #expect(server.process.stdoutLines == server.lines)
            let statistics = await log.shutdown()
            #expect(statistics.delivered == 3 && statistics.dropped == 0 && statistics.pending == 0)
            #expect(await OperationLogServer.isRegistered(), "rpcinfo -t answers while it runs")
            await server.stop()
            #expect(!(await OperationLogServer.isRegistered()), "it unregisters from rpcbind when stopped")
        }

        @Test func everyDirectoryRequestYieldsOneLineInOrder() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(logFile: folder.file("oplog.txt"))
            let log = RPCOperationLog(host: "localhost", logger: logger)
            log.start()
            let directory = try await DirectoryHarness(
                dataDirectory: folder.file("data"), operationLog: RecordingOperationLog(forwardingTo: log))
            let steps: [(Request.Command, String)] = [
                (.register(user: "alice"), "alice REGISTER"),
                (.register(user: "alice"), "alice REGISTER"),
                (.connect(user: "alice", port: "4000"), "alice CONNECT"),
                (.publish(user: "alice", fileName: "a.txt", description: "first file"), "alice PUBLISH a.txt"),
                (.listUsers(user: "alice"), "alice LIST_USERS"),
                (.listContent(user: "alice", owner: "bob"), "alice LIST_CONTENT"),
                (.delete(user: "alice", fileName: "a.txt"), "alice DELETE a.txt"),
                (.disconnect(user: "alice"), "alice DISCONNECT"),
                (.unregister(user: "alice"), "alice UNREGISTER"),
            ]
            var expected: [String] = []
            for (index, (command, prefix)) in steps.enumerated() {
                let dateTime = String(format: "25/11/2026 13:06:%02d", index)
                _ = try await directory.send(command, dateTime: dateTime)
                expected.append("\(prefix) \(dateTime)")
            }
            try await waitUntil("\(expected.count) lines") { server.lines.count >= expected.count }
            #expect(server.lines == expected)
            try await directory.shutdown()
            await log.shutdown()
            await server.stop()
        }

        @Test func logServerRestartNeitherDelaysRequestsNorLosesRecords() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let logFile = folder.file("oplog.txt")
            var server = try await OperationLogServer(logFile: logFile)
            let log = RPCOperationLog(host: "localhost", callTimeout: 0.5, logger: logger)
            log.start()
            let directory = try await DirectoryHarness(
                dataDirectory: folder.file("data"), operationLog: RecordingOperationLog(forwardingTo: log))

            var slowest = Duration.zero
            func register(_ name: String) async throws {
                let start = ContinuousClock.now
                #expect(try await directory.send(.register(user: name)) == .status(0))
                slowest = max(slowest, ContinuousClock.now - start)
            }
            for index in 0..<20 { try await register("before\(index)") }
            try await waitUntil("20 lines") { server.lines.count >= 20 }

            await server.kill()
            for index in 0..<50 { try await register("during\(index)") }
            #expect(log.currentStatistics.pending > 0, "records wait while the log server is away")

            server = try await OperationLogServer(logFile: logFile)
            for index in 0..<20 { try await register("after\(index)") }
            try await waitUntil("all 90 records", timeout: 20) { Set(server.lines).count >= 90 }

            // Every request answered promptly, even with the log server gone.
            #expect(slowest < .seconds(1), "slowest request took \(slowest)")
            // Every record arrived, in order (a call cut by the kill may be printed twice).
            var seen = Set<String>()
            let firstAppearances = server.lines.filter { seen.insert($0).inserted }
            let names = (0..<20).map { "before\($0)" } + (0..<50).map { "during\($0)" } + (0..<20).map { "after\($0)" }
            #expect(firstAppearances == names.map { "\($0) REGISTER 25/11/2026 13:05:09" })
            let statistics = await log.shutdown()
            #expect(statistics.dropped == 0)
            try await directory.shutdown()
            await server.stop()
        }

        @Test func recordsBeyondTheQueueAreDroppedAndCounted() async throws {
            // No log server at all: a small queue fills and the rest is counted as dropped.
            #expect(!(await OperationLogServer.isRegistered()))
            let log = RPCOperationLog(host: "localhost", capacity: 10, logger: logger)
            log.start()
            for index in 0..<25 {
                log.submit(OperationRecord(user: "u\(index)", operation: "REGISTER", dateTime: "25/11/2026 13:05:09"))
            }
            let statistics = await log.shutdown(drainTimeout: 0.2)
            #expect(statistics.dropped == 15)
            #expect(statistics.pending == 10)
            #expect(statistics.delivered == 0)
        }
    }
}
