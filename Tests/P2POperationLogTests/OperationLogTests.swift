import COperationLog
import Foundation
import Logging
import P2PDirectory
import P2POperationLog
import P2PProtocol
import P2PRPCOperationLog
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

        @Test func showResultAddsTheResultCodeForEitherVersion() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(logFile: folder.file("oplog.txt"), arguments: ["--show-result"])
            let log = RPCOperationLog(host: "localhost", logger: logger)
            log.start()
            log.submit(
                OperationRecord(
                    user: "alice", operation: "PUBLISH", fileName: "a.txt", dateTime: "25/11/2026 13:05:09", result: 0))
            log.submit(
                OperationRecord(
                    user: "alice", operation: "PUBLISH", fileName: "a.txt", dateTime: "25/11/2026 13:05:10", result: 3))
            try await waitUntil("2 lines") { server.lines.count >= 2 }
            _ = await log.shutdown()
            // A server from before version 2 sends version 1 records, without results.
            var error = [CChar](repeating: 0, count: 256)
            let client = try #require(oplog_client_create("localhost", UInt32(OPERATION_LOG_VERS), 2000, &error, 256))
            defer { oplog_client_destroy(client) }
            let sent = "bob".withCString { user in
                "REGISTER".withCString { operation in
                    "".withCString { file in
                        "25/11/2026 13:05:11".withCString { dateTime in
                            var record = operation_result(
                                record: operation_record(
                                    user: UnsafeMutablePointer(mutating: user),
                                    operation: UnsafeMutablePointer(mutating: operation),
                                    file_name: UnsafeMutablePointer(mutating: file),
                                    date_time: UnsafeMutablePointer(mutating: dateTime)),
                                result: 0)
                            return oplog_client_send(client, UInt32(OPERATION_LOG_VERS), &record, 1, &error, 256)
                        }
                    }
                }
            }
            #expect(sent == 0)
            try await waitUntil("3 lines") { server.lines.count >= 3 }
            await server.stop()
            #expect(
                server.lines == [
                    "alice PUBLISH a.txt 25/11/2026 13:05:09 -> 0",
                    "alice PUBLISH a.txt 25/11/2026 13:05:10 -> 3",
                    "bob REGISTER 25/11/2026 13:05:11 -> ?",
                ])
        }

        @Test func aSecondLogServerRefusesWhileTheFirstAnswers() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let first = try await OperationLogServer(logFile: folder.file("first.txt"))
            let second = try ChildProcess(OperationLogServer.binary, ["--log-file", folder.file("second.txt")])
            let status = try await second.waitForExit()
            #expect(status != 0)
            #expect(
                second.stderrLines.contains { $0.contains("already registered and answering") }, "\(second.stderrLines)"
            )
            // The first one is still registered and still prints.
            #expect(await OperationLogServer.isRegistered())
            let log = RPCOperationLog(host: "localhost", logger: logger)
            log.start()
            log.submit(OperationRecord(user: "carol", operation: "REGISTER", dateTime: "25/11/2026 13:05:09"))
            try await waitUntil("the first server prints it") { first.lines == ["carol REGISTER 25/11/2026 13:05:09"] }
            _ = await log.shutdown()
            await first.stop()
        }

        @Test func aStaleRegistrationIsTakenOver() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let killed = try await OperationLogServer(logFile: folder.file("killed.txt"))
            await killed.kill()
            #expect(await OperationLogServer.hasRegistration(), "kill -9 leaves the registration behind")
            let next = try await OperationLogServer(logFile: folder.file("next.txt"))
            let log = RPCOperationLog(host: "localhost", logger: logger)
            log.start()
            log.submit(OperationRecord(user: "dave", operation: "REGISTER", dateTime: "25/11/2026 13:05:09"))
            try await waitUntil("the new server prints it") { next.lines == ["dave REGISTER 25/11/2026 13:05:09"] }
            _ = await log.shutdown()
            await next.stop()
        }

        @Test func logFileWithoutAPathIsNamed() async throws {
            let process = try ChildProcess(OperationLogServer.binary, ["--log-file"])
            #expect(try await process.waitForExit() == 2)
            #expect(process.stderrLines.first == "p2p-oplog: --log-file needs a path")
        }

        /// Also with `--show-result`: the result code each request was answered travels with it.
        @Test(arguments: [false, true])
        func everyDirectoryRequestYieldsOneLineInOrder(showResult: Bool) async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(
                logFile: folder.file("oplog.txt"), arguments: showResult ? ["--show-result"] : [])
            let log = RPCOperationLog(host: "localhost", logger: logger)
            log.start()
            let directory = try await DirectoryHarness(
                dataDirectory: folder.file("data"), operationLog: RecordingOperationLog(forwardingTo: log))
            let steps: [(Request.Command, String, Int)] = [
                (.register(user: "alice"), "alice REGISTER", 0),
                (.register(user: "alice"), "alice REGISTER", 1),
                (.connect(user: "alice", port: "4000"), "alice CONNECT", 0),
                (.publish(user: "alice", fileName: "a.txt", description: "first file"), "alice PUBLISH a.txt", 0),
                (.listUsers(user: "alice"), "alice LIST_USERS", 0),
                (.listContent(user: "alice", owner: "bob"), "alice LIST_CONTENT", 3),
                (.delete(user: "alice", fileName: "a.txt"), "alice DELETE a.txt", 0),
                (.disconnect(user: "alice"), "alice DISCONNECT", 0),
                (.unregister(user: "alice"), "alice UNREGISTER", 0),
            ]
            var expected: [String] = []
            for (index, (command, prefix, code)) in steps.enumerated() {
                let dateTime = String(format: "25/11/2026 13:06:%02d", index)
                _ = try await directory.send(command, dateTime: dateTime)
                expected.append("\(prefix) \(dateTime)" + (showResult ? " -> \(code)" : ""))
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
