import Foundation
import NIOCore
import P2PDirectory
import P2PDirectorySQLite
import P2PProtocol
import P2PTestSupport
import Testing

/// All four programs as separate processes: rpcbind and `p2p-oplog`, `p2p-time`, `p2p-server`
/// and `p2p-client`s, as `make run` starts them.
extension LogServerSuites {
    @Suite struct EndToEndTests {
        /// The whole system on fixed free ports, in a temporary folder, torn down afterwards.
        final class System: Sendable {
            let folder: TemporaryDirectory
            let serverPort: Int
            let timePort: Int
            let logFile: String
            let oplog: Locked<OperationLogServer?>
            let time: Locked<TimeProcess?>
            let server: Locked<ServerProcess?>

            init() async throws {
                folder = try TemporaryDirectory("e2e")
                serverPort = try unusedPort()
                timePort = try unusedPort()
                logFile = folder.file("oplog.txt")
                oplog = Locked(try await OperationLogServer(logFile: logFile))
                time = Locked(try await TimeProcess(port: timePort, arguments: ["--access-log"]))
                server = Locked(nil)
                try await startServer()
            }

            func startServer() async throws {
                let process = try await ServerProcess(
                    dataDirectory: folder.file("storage"), port: serverPort, arguments: ["--rpc-host", "localhost"])
                server.withLock { $0 = process }
            }

            func stopServer() async { await server.value?.stop() }

            func client(_ name: String) throws -> ClientProcess {
                let directory = folder.file(name)
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                return try ClientProcess(
                    serverPort: serverPort, timeURL: "http://127.0.0.1:\(timePort)", directory: directory)
            }

            /// The log's lines as (user, operation, file) with the date-time checked and dropped.
            var logEntries: [String] {
                (oplog.value?.lines ?? (try? String(contentsOfFile: logFile, encoding: .utf8))?
                    .split(separator: "\n").map(String.init) ?? [])
                    .map { line in
                        let words = line.split(separator: " ")
                        let dateTime = words.suffix(2).joined(separator: " ")
                        #expect(DateTimeFormat.isValid(dateTime), "log line \(line)")
                        return words.dropLast(2).joined(separator: " ")
                    }
            }

            func tearDown() async {
                await server.value?.stop()
                await time.value?.stop()
                await oplog.value?.stop()
                folder.remove()
            }

            static func with(_ body: (System) async throws -> Void) async throws {
                let system = try await System()
                do {
                    try await body(system)
                } catch {
                    await system.tearDown()
                    throw error
                }
                await system.tearDown()
            }
        }

        @Test func twoClientsShareAFileAndEveryRequestIsLoggedOnce() async throws {
            try await System.with { system in
                let notes = Data((0..<5000).map { UInt8(truncatingIfNeeded: $0 * 7) })
                let alice = try system.client("alice")
                try notes.write(to: URL(fileURLWithPath: system.folder.file("alice/notes.txt")))
                let bob = try system.client("bob")

                #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
                #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
                #expect(try await alice.run("PUBLISH notes.txt my notes") == "c> PUBLISH OK")
                #expect(try await bob.run("REGISTER bob") == "c> REGISTER OK")
                #expect(try await bob.run("CONNECT bob") == "c> CONNECT OK")
                #expect(try await bob.run("LIST_USERS") == "c> LIST_USERS OK")
                #expect(try await bob.run("LIST_CONTENT alice") == "c> LIST_CONTENT OK")
                #expect(try await bob.run("GET_FILE alice notes.txt copy.txt") == "c> GET_FILE OK")
                #expect(try await alice.run("DELETE notes.txt") == "c> DELETE OK")
                #expect(try await alice.run("DISCONNECT alice") == "c> DISCONNECT OK")
                #expect(try await alice.run("UNREGISTER alice") == "c> UNREGISTER OK")
                #expect(try await bob.run("DISCONNECT bob") == "c> DISCONNECT OK")
                #expect(try await bob.run("UNREGISTER bob") == "c> UNREGISTER OK")
                _ = try await alice.finish()
                let bobLines = try await bob.finish()

                #expect(try Data(contentsOf: URL(fileURLWithPath: system.folder.file("bob/copy.txt"))) == notes)
                #expect(
                    bobLines.contains(
                        "alice 127.0.0.1 " + bobLines.first { $0.hasPrefix("alice ") }!.split(separator: " ")[2]))
                #expect(bobLines.contains(#"notes.txt "my notes""#))
                let expected = [
                    "alice LIST_CONTENT",  // before the first change: does the server have keys?
                    "alice IDENTIFY",  // it does: alice's keyed session
                    "alice REGISTER", "alice CONNECT",
                    "alice LIST_CONTENT",  // CONNECT serves again what alice published before
                    "alice LIST_CONTENT",  // what the server offers beyond the spec
                    "alice CONTROL",  // which includes the control connection: opened
                    "alice PUBLISH notes.txt", "bob LIST_CONTENT", "bob IDENTIFY", "bob REGISTER", "bob CONNECT",
                    "bob LIST_CONTENT",
                    "bob LIST_CONTENT", "bob CONTROL",
                    "bob LIST_USERS", "bob LIST_CONTENT",
                    "bob LIST_USERS",  // GET_FILE looks the owner up
                    "alice DELETE notes.txt", "alice DISCONNECT", "alice UNREGISTER", "bob DISCONNECT",
                    "bob UNREGISTER",
                ]
                try await waitUntil("\(expected.count) log lines") { system.logEntries.count >= expected.count }
                #expect(system.logEntries == expected)
                // The date-times came from the time service: one call per request (the keys'
                // LIST_CONTENT and IDENTIFY carry the date-time of the change they come before).
                let soapCalls = system.time.value!.process.stdoutLines.filter { $0.contains("POST / 200") }
                #expect(soapCalls.count == expected.count - 4)
            }
        }

        @Test func serverRestartKeepsUsersFilesAndConnections() async throws {
            try await System.with { system in
                let alice = try system.client("alice")
                #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
                #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
                #expect(try await alice.run("PUBLISH a.txt first") == "c> PUBLISH OK")

                await system.stopServer()
                #expect(try await alice.run("PUBLISH b.txt while down") == "c> PUBLISH FAIL")
                try await system.startServer()

                // Still registered, still connected, files still there.
                #expect(try await alice.run("PUBLISH b.txt second") == "c> PUBLISH OK")
                #expect(try await alice.run("CONNECT alice") == "c> USER ALREADY CONNECTED")
                let bob = try system.client("bob")
                #expect(try await bob.run("REGISTER bob") == "c> REGISTER OK")
                #expect(try await bob.run("CONNECT bob") == "c> CONNECT OK")
                #expect(try await bob.run("LIST_CONTENT alice") == "c> LIST_CONTENT OK")
                let bobLines = try await bob.finish()
                _ = try await alice.finish()
                #expect(Array(bobLines.suffix(3)) == [#"a.txt "first""#, #"b.txt "second""#, "c> DISCONNECT OK"])
            }
        }

        @Test func clientsKeepWorkingWithoutTheLogServerAndTheTimeService() async throws {
            try await System.with { system in
                let alice = try system.client("alice")
                #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
                // (The capabilities, alice's keyed session, her REGISTER.)
                try await waitUntil("the first log lines") { system.logEntries.count == 3 }

                await system.oplog.value?.stop()
                system.oplog.withLock { $0 = nil }
                let start = ContinuousClock.now
                #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
                #expect(try await alice.run("PUBLISH a.txt text") == "c> PUBLISH OK")
                #expect(ContinuousClock.now - start < .seconds(3), "the log server being away delays nothing")

                await system.time.value?.stop()
                #expect(try await alice.run("LIST_USERS") == "c> LIST_USERS OK")
                #expect(try await alice.run("DELETE a.txt") == "c> DELETE OK")
                #expect(alice.process.stderrLines.filter { $0.contains("using the local clock") }.count == 1)

                // The log server returns: what was held arrives, in order.
                let restarted = try await OperationLogServer(logFile: system.logFile)
                system.oplog.withLock { $0 = restarted }
                let expected = [
                    "alice LIST_CONTENT",  // before the first change: does the server have keys?
                    "alice IDENTIFY",  // it does: alice's keyed session
                    "alice REGISTER", "alice CONNECT", "alice LIST_CONTENT", "alice LIST_CONTENT", "alice CONTROL",
                    "alice PUBLISH a.txt", "alice LIST_USERS", "alice DELETE a.txt",
                ]
                try await waitUntil("the log to catch up", timeout: 20) { system.logEntries.count >= expected.count }
                #expect(system.logEntries == expected)
                _ = try await alice.finish()
            }
        }

        @Test func fiftyClientsAtOnce() async throws {
            try await System.with { system in
                let count = 50
                let script: @Sendable (Int) -> [String] = { n in
                    [
                        "REGISTER user\(n)", "CONNECT user\(n)", "PUBLISH file\(n) description \(n)", "LIST_USERS",
                        "LIST_CONTENT user\(n)", "DELETE file\(n)", "DISCONNECT user\(n)",
                    ]
                }
                let outputs = try await withThrowingTaskGroup(of: (Int, [String]).self) { group in
                    for n in 0..<count {
                        group.addTask {
                            let client = try system.client("c\(n)")
                            client.send(script(n))
                            return (n, try await client.finish())
                        }
                    }
                    return try await group.reduce(into: [Int: [String]]()) { $0[$1.0] = $1.1 }
                }
                for n in 0..<count {
                    let results = outputs[n]!.filter { $0.hasPrefix("c> ") }
                    #expect(
                        results == [
                            "c> REGISTER OK", "c> CONNECT OK", "c> PUBLISH OK", "c> LIST_USERS OK",
                            "c> LIST_CONTENT OK",
                            "c> DELETE OK", "c> DISCONNECT OK",
                        ], "client \(n): \(outputs[n]!)")
                    #expect(outputs[n]!.contains(#"file\#(n) "description \#(n)""#))
                }
                // Seven commands, and what the client sends besides: before its first change the
                // LIST_CONTENT asking whether the server has keys and IDENTIFY (its keyed session);
                // at CONNECT the LIST_CONTENT of its own files, the one asking what the server
                // offers, and CONTROL.
                try await waitUntil("\(count * 12) log lines", timeout: 30) { system.logEntries.count >= count * 12 }
                #expect(system.logEntries.count == count * 12)
                for n in 0..<count {
                    #expect(system.logEntries.filter { $0.hasPrefix("user\(n) ") }.count == 12)
                }
                await system.stopServer()
                let store = try SQLiteDirectoryStore(dataDirectory: system.folder.file("storage"))
                #expect(try await store.registeredUsers() == (0..<count).map { "user\($0)" }.sorted())
                try await store.close()
            }
        }

        @Test(arguments: [SIGTERM, SIGINT])
        func serverStopsGracefullyAndDeliversItsLastRecords(_ signal: Int32) async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let oplog = try await OperationLogServer(logFile: folder.file("oplog.txt"))
            let server = try await ServerProcess(dataDirectory: folder.file("storage"), arguments: [])
            let address = try SocketAddress(ipAddress: "127.0.0.1", port: server.port)
            let request = Request(dateTime: "25/11/2026 13:05:09", command: .register(user: "last"))
            #expect(try await RawConnection.send(request, to: address) == .status(0))
            server.process.signal(signal)
            let status = try await server.process.waitForExit(timeout: 15)
            await oplog.stop()
            #expect(status == 0)
            #expect(server.process.stdoutLines.last == "s> server stopped")
            #expect(
                server.process.stdoutLines.contains(
                    "s> operation log: delivered 1 records in 1 calls, dropped 0, pending 0"))
            #expect(oplog.lines == ["last REGISTER 25/11/2026 13:05:09"])
        }
    }
}

extension LogServerSuites.EndToEndTests {
    /// Issue 43: a name with a newline and a terminal escape, sent by anyone, is refused by our
    /// server, and neither its console nor the operation log prints it raw (no forged line).
    @Test func namesWithControlCharactersForgeNoLines() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let oplog = try await OperationLogServer(logFile: folder.file("oplog.txt"))
        let server = try await ServerProcess(dataDirectory: folder.file("storage"), arguments: [])
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: server.port)
        let outsider = try SocketAddress(ipAddress: "127.0.0.5", port: 0)
        let forged = "x\nalice UNREGISTER 01/01/2026 00:00:00\u{1B}[2J"
        let dateTime = "25/11/2026 13:05:09"
        #expect(
            try await RawConnection.send(
                Request(dateTime: dateTime, command: .register(user: forged)), to: address, from: outsider)
                == .status(2))
        #expect(
            try await RawConnection.send(
                Request(dateTime: dateTime, command: .register(user: "bob")), to: address, from: outsider) == .status(0)
        )
        #expect(
            try await RawConnection.send(
                Request(dateTime: dateTime, command: .connect(user: "bob", port: "9999")), to: address, from: outsider)
                == .status(0))
        #expect(
            try await RawConnection.send(
                Request(dateTime: dateTime, command: .publish(user: "bob", fileName: "a\u{7F}b", description: "x")),
                to: address,
                from: outsider) == .status(4))
        #expect(
            try await RawConnection.send(
                Request(
                    dateTime: dateTime, command: .publish(user: "bob", fileName: "ok.txt", description: "two\nlines")),
                to: address, from: outsider) == .status(4))
        try await waitUntil("the records logged") { oplog.lines.count >= 5 }
        await server.stop()
        await oplog.stop()
        for lines in [oplog.lines, server.process.stdoutLines] {
            #expect(!lines.contains { $0.hasPrefix("alice UNREGISTER") }, "\(lines)")
            #expect(!lines.contains { $0.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x7F } }, "\(lines)")
        }
        #expect(oplog.lines.first == "x\\nalice UNREGISTER 01/01/2026 00:00:00\\x1B[2J REGISTER 25/11/2026 13:05:09")
        #expect(
            server.process.stdoutLines.contains("s> REGISTER FROM x\\nalice UNREGISTER 01/01/2026 00:00:00\\x1B[2J"))
    }
}
