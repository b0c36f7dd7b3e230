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
    }
}
