import Foundation
import P2PTestSupport
import Testing

extension LogServerSuites {
    /// `make run`'s script in a real terminal, with the debug build: what it prints and how
    /// Ctrl+C ends it. Part of the serialized log-server suites, since it starts a log server.
    @Suite struct RunScriptTests {
        @Test func ctrlCStopsEverythingShowingTheLastLinesAndExitsZero() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let (p2pPort, timePort, webPort) = (try unusedPort(), try unusedPort(), try unusedPort())
            let command =
                "BUILD=debug P2P_PORT=\(p2pPort) TIME_PORT=\(timePort) WEB_PORT=\(webPort) "
                + "DATA_DIR=\(folder.file("storage")) \(packageRoot)/scripts/run.sh; echo \"run.sh exited $?\""
            try await TerminalSession.with(command, directory: packageRoot) { terminal in
                let screen = try await terminal.waitForScreen("the system up", timeout: 60) { screen in
                    screen.contains { $0.contains("Ctrl+C stops everything") }
                }
                // The client command to copy: absolute, with the time service's port.
                let client = try #require(screen.first { $0.contains("p2p-client -s localhost") })
                #expect(
                    client.trimmingCharacters(in: .whitespaces)
                        == "\(packageRoot)/.build/debug/p2p-client -s localhost -p \(p2pPort) "
                        + "--time-service http://localhost:\(timePort)")
                #expect(!screen.contains { $0.contains("RPC: Program not registered") }, "\(screen)")
                #expect(!screen.contains { $0.contains("portmapper") }, "\(screen)")

                try await terminal.press("C-c")
                let end = try await terminal.waitForScreen("run.sh to end", timeout: 60) { screen in
                    screen.contains { $0.hasPrefix("run.sh exited") }
                }
                #expect(end.contains("run.sh exited 0"), "\(end)")
                #expect(end.contains("server | s> server stopped"), "the server's last line: \(end)")
                #expect(end.contains { $0.hasPrefix("server | s> operation log: delivered") }, "\(end)")
                #expect(end.contains("oplog  | p2p-oplog: stopped"), "\(end)")
            }
            #expect(!(await OperationLogServer.isRegistered()), "nothing left running")
        }

        /// `make run-cluster`: the database tier (etcd, two PostgreSQL nodes under Patroni, HAProxy
        /// to the primary), three servers and HAProxy come up; a client through HAProxy is served
        /// and listed with its own address; Ctrl+C stops all of it.
        @Test func clusterComesUpServesAndCtrlCLeavesNothing() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let ports = (
                p2p: try unusedPort(), time: try unusedPort(), web: try unusedPort(), postgres: try unusedPort()
            )
            let command =
                "BUILD=debug P2P_PORT=\(ports.p2p) TIME_PORT=\(ports.time) WEB_PORT=\(ports.web) "
                + "PG_PORT=\(ports.postgres) CLUSTER_DIR=\(folder.file("cluster")) "
                + "\(packageRoot)/scripts/run.sh --cluster; echo \"run.sh exited $?\""
            // The three servers listen on the ports after P2P_PORT: they must be free too.
            try #require((1...3).allSatisfy { !isListening(ports.p2p + $0) }, "ports after \(ports.p2p) in use")
            // etcd, the two nodes and their Patroni take the six ports after PG_PORT.
            try #require(
                (1...6).allSatisfy { !isListening(ports.postgres + $0) }, "ports after \(ports.postgres) in use")
            try await TerminalSession.with(command, directory: packageRoot) { terminal in
                let screen = try await terminal.waitForScreen("the cluster up", timeout: 120) { screen in
                    screen.contains { $0.contains("Ctrl+C stops everything") }
                }
                #expect(screen.contains { $0.contains("with 3 directory servers") }, "\(screen)")
                #expect(screen.contains { $0.contains("synchronous replication") }, "\(screen)")

                let shared = folder.file("shared")
                try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
                let client = try ClientProcess(
                    serverPort: ports.p2p, timeURL: "http://127.0.0.1:\(ports.time)", directory: shared)
                #expect(try await client.run("REGISTER alice") == "c> REGISTER OK")
                #expect(try await client.run("CONNECT alice") == "c> CONNECT OK")
                // Through HAProxy, each request goes to another server; all see one directory.
                for _ in 0..<3 {
                    #expect(try await client.run("LIST_USERS") == "c> LIST_USERS OK")
                }
                let output = try await client.finish()
                var listed = 0
                for line in output where line.hasPrefix("alice 127.0.0.1 ") { listed += 1 }
                #expect(listed == 3, "\(output)")

                try await terminal.press("C-c")
                let end = try await terminal.waitForScreen("run.sh to end", timeout: 60) { screen in
                    screen.contains { $0.hasPrefix("run.sh exited") }
                }
                #expect(end.contains("run.sh exited 0"), "\(end)")
                #expect(end.contains { $0.contains("database system is shut down") }, "\(end)")
            }
            let database = (0...6).map { ports.postgres + $0 }
            for port in [ports.p2p, ports.p2p + 1, ports.p2p + 2, ports.p2p + 3, ports.time] + database {
                #expect(!isListening(port), "port \(port) still served after Ctrl+C")
            }
            #expect(!(await OperationLogServer.isRegistered()), "nothing left running")
        }

        /// `make run-cluster` outlives the machine of its primary database node (Patroni and
        /// PostgreSQL killed outright): it says so and goes on, the replica takes over and
        /// REGISTERs through HAProxy are served again within 15 s; `kill -USR1` as it tells
        /// starts the node again, which rejoins as the synchronous standby; a directory server
        /// killed is reported the same way; SIGTERM still stops everything, exit 0.
        @Test func clusterOutlivesLosingThePrimarysMachine() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let ports = (
                p2p: try unusedPort(), time: try unusedPort(), web: try unusedPort(), postgres: try unusedPort()
            )
            try #require((1...3).allSatisfy { !isListening(ports.p2p + $0) }, "ports after \(ports.p2p) in use")
            try #require(
                (1...6).allSatisfy { !isListening(ports.postgres + $0) }, "ports after \(ports.postgres) in use")
            let cluster = folder.file("cluster")
            let run = try ChildProcess(
                "\(packageRoot)/scripts/run.sh", ["--cluster"], directory: packageRoot,
                environment: ProcessInfo.processInfo.environment.merging([
                    "BUILD": "debug", "P2P_PORT": "\(ports.p2p)", "TIME_PORT": "\(ports.time)",
                    "WEB_PORT": "\(ports.web)", "PG_PORT": "\(ports.postgres)", "CLUSTER_DIR": cluster,
                ]) { $1 })
            try await run.waitForLine(timeout: 120) { $0.contains("Ctrl+C stops everything") }
            func tier(_ command: String, _ node: String? = nil) async -> (status: Int32, output: String) {
                let shell = try? ChildProcess(
                    "\(packageRoot)/scripts/pg-ha.sh", [command, cluster] + (node.map { [$0] } ?? []))
                let status = (try? await shell?.waitForExit(timeout: 30)) ?? -1
                return (status, shell?.stdoutLines.joined() ?? "")
            }
            try await waitUntil("a synchronous standby", timeout: 60) { await tier("sync").status == 0 }
            let primary = await tier("primary").output
            try #require(primary == "1" || primary == "2", "primary: \(primary)")
            let shared = folder.file("shared")
            try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
            func register(_ user: String) async throws -> String? {
                let client = try ClientProcess(
                    serverPort: ports.p2p, timeURL: "http://127.0.0.1:\(ports.time)", directory: shared)
                let line = try await client.run("REGISTER \(user)")
                _ = try await client.finish()
                return line
            }
            #expect(try await register("before") == "c> REGISTER OK")

            #expect(await tier("lose", primary).status == 0)
            let lost = try await run.waitForLine(timeout: 20) { $0.contains("database node \(primary) exited") }
            #expect(lost.contains("the rest go on") && lost.contains("kill -USR1 \(run.pid)"), "\(lost)")
            let start = Date()
            var served = false
            while !served, Date().timeIntervalSince(start) < 15 {
                served = try await register("after\(Int(Date().timeIntervalSince(start) * 10))") == "c> REGISTER OK"
            }
            #expect(served, "REGISTER served again within 15 s of losing the primary's machine")
            #expect(run.isRunning, "run.sh goes on: \(run.stdoutLines.suffix(10))")

            run.signal(SIGUSR1)
            try await run.waitForLine { $0.contains("started database node \(primary) again") }
            try await waitUntil("the lost node synchronous again", timeout: 60) {
                await tier("sync").output == primary
            }

            let pgrep = try ChildProcess("/usr/bin/pgrep", ["-f", "p2p-server --host 127.0.0.1 -p \(ports.p2p + 2) "])
            _ = try await pgrep.waitForExit()
            let server2 = try #require(pgrep.stdoutLines.first.flatMap { pid_t($0) }, "\(pgrep.stdoutLines)")
            #expect(kill(server2, SIGKILL) == 0)
            try await run.waitForLine { $0.contains("directory server 2 exited; the rest go on") }
            #expect(try await register("fewer") == "c> REGISTER OK")
            #expect(run.isRunning)

            run.signal(SIGTERM)
            #expect(try await run.waitForExit(timeout: 90) == 0, "\(run.stdoutLines.suffix(20))")
            let database = (0...6).map { ports.postgres + $0 }
            for port in [ports.p2p, ports.p2p + 1, ports.p2p + 3, ports.time] + database {
                #expect(!isListening(port), "port \(port) still served after SIGTERM")
            }
            #expect(!(await OperationLogServer.isRegistered()), "nothing left running")
        }
    }
}
