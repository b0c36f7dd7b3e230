import Foundation
import NIOCore
import P2PClient
import P2PProtocol
import P2PTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The client as a person meets it: in a real terminal (tmux), typing keys, reading the screen.
@Suite struct InteractivePromptTests {
    /// A server, a time service, a folder with a home for the history file, and the command
    /// that starts a client in a terminal.
    struct Setup {
        let folder: TemporaryDirectory
        let server: ServerProcess
        let time: TimeProcess
        var home: String { folder.file("home") }
        var historyFile: String { "\(home)/.p2p_client_history" }

        static func with(_ body: (Setup) async throws -> Void) async throws {
            let folder = try TemporaryDirectory()
            try FileManager.default.createDirectory(atPath: folder.file("home"), withIntermediateDirectories: true)
            let server = try await ServerProcess(dataDirectory: folder.file("storage"))
            let time = try await TimeProcess()
            let setup = Setup(folder: folder, server: server, time: time)
            do {
                try await body(setup)
            } catch {
                await setup.tearDown()
                throw error
            }
            await setup.tearDown()
        }

        func tearDown() async {
            await server.stop()
            await time.stop()
            folder.remove()
        }

        func clientCommand(port: Int? = nil) -> String {
            "\(builtProduct("p2p-client")) -s 127.0.0.1 -p \(port ?? server.port) --time-service \(time.url)"
        }

        /// A client in its own terminal, at its first prompt.
        func terminal(_ body: (TerminalSession) async throws -> Void) async throws {
            try await TerminalSession.with(clientCommand(), directory: folder.path, environment: ["HOME": home]) {
                terminal in
                try await terminal.waitForScreen("the first prompt") { $0.last == "c>" || $0.last == "c> " }
                try await body(terminal)
            }
        }
    }

    @Test func arrowsEditTheLineAndTabCompletesCommands() async throws {
        try await Setup.with { setup in
            try await setup.terminal { terminal in
                try await terminal.type("REGISTER alice")
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> REGISTER OK")
                // The typo fixed with the arrows, as in any shell.
                try await terminal.type("LIST_USRS")
                try await terminal.press("Left", "Left")
                try await terminal.type("E")
                try await terminal.press("Enter")
                let screen = try await terminal.waitForResult("c> LIST_USERS FAIL, USER NOT CONNECTED")
                #expect(!screen.joined().contains("unknown command"), "screen: \(screen)")
                #expect(!screen.joined().contains("^[["), "escape sequences shown raw: \(screen)")
                // Tab completes a command name, whatever the case typed.
                try await terminal.type("conn")
                try await terminal.press("Tab")
                try await terminal.type("alice")
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> CONNECT OK")
                // Ctrl+A / Ctrl+E move to the ends of the line.
                try await terminal.type("alice")
                try await terminal.press("C-a")
                try await terminal.type("LIST_CONTENT ")
                try await terminal.press("C-e", "Enter")
                try await terminal.waitForResult("c> LIST_CONTENT OK")
            }
        }
    }

    @Test func historyIsKeptAcrossRuns() async throws {
        try await Setup.with { setup in
            try await setup.terminal { terminal in
                try await terminal.type("REGISTER alice")
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> REGISTER OK")
                try await terminal.type("LIST_USERS")
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> LIST_USERS FAIL, USER NOT CONNECTED")
                // Up twice: REGISTER alice again.
                try await terminal.press("Up", "Up", "Enter")
                try await terminal.waitForResult("c> USERNAME IN USE")
                try await terminal.press("C-d")
                #expect(try await terminal.waitForExit() == 0)
            }
            let history = try String(contentsOfFile: setup.historyFile, encoding: .utf8)
            #expect(history.contains("LIST_USERS"))
            // A new client finds the last command with Up, and an older one with Ctrl+R.
            try await setup.terminal { terminal in
                try await terminal.press("Up", "Enter")
                try await terminal.waitForResult("c> USERNAME IN USE")
                try await terminal.press("C-r")
                try await terminal.type("LIST_")
                try await terminal.waitForScreen("the search") { $0.contains { $0.hasPrefix("bck:LIST_") } }
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> LIST_USERS FAIL, USER NOT CONNECTED")
            }
        }
    }

    @Test func helpListsTheCommandsAndUnknownCommandsPointToIt() async throws {
        try await Setup.with { setup in
            try await setup.terminal { terminal in
                try await terminal.type("help")
                try await terminal.press("Enter")
                let screen = try await terminal.waitForScreen("the help") { screen in
                    screen.contains { $0.hasPrefix("GET_FILE <userName> <remoteFileName> <localFileName>") }
                        && screen.last == "c>"
                }
                for name in ConsoleCommand.names {
                    #expect(screen.contains { $0.hasPrefix(name) }, "\(name) missing from help: \(screen)")
                }
                #expect(screen.allSatisfy { $0.count <= 120 }, "help lines fit a terminal: \(screen)")
                try await terminal.type("FOO bar")
                try await terminal.press("Enter")
                let after = try await terminal.waitForResult("c> unknown command FOO; type help for the commands")
                #expect(after.allSatisfy { $0.count <= 120 })
                try await terminal.type("register bob")
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> REGISTER OK")
            }
        }
    }

    @Test func ctrlCWhileConnectedDisconnectsFirst() async throws {
        try await Setup.with { setup in
            try await setup.terminal { terminal in
                try await terminal.type("REGISTER alice")
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> REGISTER OK")
                try await terminal.type("CONNECT alice")
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> CONNECT OK")
                try await terminal.type("LIST_U")
                try await terminal.press("C-c")
                try await terminal.waitForLine("c> DISCONNECT OK")
                #expect(try await terminal.waitForExit() == 0)
                let screen = try await terminal.screen()
                #expect(!screen.contains { $0.contains("LIST_USERS OK") }, "the half-typed line is not run")
            }
            // alice is offline: another client with her key can connect her.
            let lines = try await ClientProcess.run(
                ["CONNECT alice", "QUIT"], serverPort: setup.server.port, timeURL: setup.time.url,
                directory: setup.folder.path,
                extraArguments: ["--identity", setup.home + "/.config/p2p-client/identity"])
            #expect(lines == ["c> CONNECT OK", "c> DISCONNECT OK"])
        }
    }

    @Test func theLineTypedSoFarIsRedrawnAfterCtrlZAndFg() async throws {
        try await Setup.with { setup in
            // A job-control shell, as a person has: Ctrl+Z stops the client, fg continues it.
            let rcfile = setup.folder.file("bashrc")
            try "PS1='shell$ '\n".write(toFile: rcfile, atomically: true, encoding: .utf8)
            try await TerminalSession.with(
                "/bin/bash --noprofile --rcfile \(rcfile) -i", directory: setup.folder.path,
                environment: ["HOME": setup.home]
            ) { terminal in
                try await terminal.waitForScreen("the shell") { $0.last?.hasPrefix("shell$") == true }
                try await terminal.type(setup.clientCommand())
                try await terminal.press("Enter")
                try await terminal.waitForScreen("the client's prompt") { $0.last == "c>" || $0.last == "c> " }
                try await terminal.type("REGISTER zed")
                try await terminal.press("C-z")
                try await terminal.waitForScreen("the client stopped") { $0.contains { $0.contains("Stopped") } }
                try await terminal.type("fg")
                try await terminal.press("Enter")
                // The prompt and the half-typed line come back; the line can be finished.
                try await terminal.waitForScreen("the prompt redrawn") { $0.last == "c> REGISTER zed" }
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> REGISTER OK")
                try await terminal.press("C-d")
                try await terminal.waitForScreen("back at the shell") { $0.last?.hasPrefix("shell$") == true }
            }
        }
    }

    @Test func aServerThatDoesNotAnswerIsNamedAtStart() async throws {
        try await Setup.with { setup in
            let nobody = try ClosedPort()
            try await TerminalSession.with(
                setup.clientCommand(port: nobody.port), directory: setup.folder.path,
                environment: ["HOME": setup.home]
            ) { terminal in
                let screen = try await terminal.waitForScreen("the warning and the prompt") { screen in
                    screen.contains { $0.contains("directory server unreachable") }
                        && screen.last?.hasPrefix("c>") == true
                }
                #expect(screen.filter { $0.hasPrefix("p2p-client:") }.count == 1, "one line: \(screen)")
                try await terminal.type("REGISTER alice")
                try await terminal.press("Enter")
                try await terminal.waitForResult("c> REGISTER FAIL")
            }
        }
    }
}

/// The client driven by a script (stdin not a terminal).
@Suite struct ScriptedClientTests {
    @Test func exitStatusSaysWhetherACommandFailed() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let time = try await TimeProcess()
        defer {
            Task {
                await server.stop()
                await time.stop()
            }
        }
        func run(_ commands: [String]) async throws -> (lines: [String], status: Int32) {
            let client = try ClientProcess(serverPort: server.port, timeURL: time.url, directory: folder.path)
            client.send(commands)
            return try await client.finishWithStatus()
        }
        #expect(try await run(["REGISTER alice", "LIST_CONTENT alice"]).status == 1)
        #expect(try await run(["REGISTER bob", "CONNECT bob", "LIST_USERS", "DISCONNECT bob"]).status == 0)
        #expect(try await run(["BOGUS"]).status == 1)
        // End of input while connected disconnects and says so, as QUIT does.
        let ended = try await run(["CONNECT bob"])
        #expect(ended.lines == ["c> CONNECT OK", "c> DISCONNECT OK"])
        #expect(ended.status == 0)
    }

    @Test func hintsOnStderrLeaveTheResultLinesAlone() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let time = try await TimeProcess()
        defer {
            Task {
                await server.stop()
                await time.stop()
            }
        }
        try Data("notes".utf8).write(to: URL(fileURLWithPath: folder.file("notes.txt")))
        let fresh = try ClientProcess(serverPort: server.port, timeURL: time.url, directory: folder.path)
        fresh.send(["LIST_USERS"])
        #expect(try await fresh.finish() == ["c> LIST_USERS FAIL, USER DOES NOT EXIST"])
        #expect(fresh.process.stderrLines.contains { $0.contains("no user is registered or connected in this client") })

        let client = try ClientProcess(serverPort: server.port, timeURL: time.url, directory: folder.path)
        client.send(["REGISTER alice", "CONNECT alice", "PUBLISH notes.txt mine", "PUBLISH ghost.txt not here"])
        let lines = try await client.finish()
        #expect(Array(lines.prefix(4)) == ["c> REGISTER OK", "c> CONNECT OK", "c> PUBLISH OK", "c> PUBLISH OK"])
        let stderr = client.process.stderrLines
        #expect(
            stderr.filter {
                $0.contains(
                    "serving to other peers the 0 files alice published (relative names from \(realPath(folder.path)))")
            }
            .count == 1, "stderr: \(stderr)")
        #expect(stderr.contains { $0.contains("ghost.txt is not a file in the shared folder") }, "stderr: \(stderr)")
        #expect(!stderr.contains { $0.contains("notes.txt is not") })
    }

    @Test func ctrlCDuringGetFileLeavesNoPartialFile() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let time = try await TimeProcess()
        defer {
            Task {
                await server.stop()
                await time.stop()
            }
        }
        // bob's peer sends the start of a file and then nothing: the download stays in progress.
        let peer = try TricklingPeer()
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: server.port)
        for command in [Request.Command.register(user: "bob"), .connect(user: "bob", port: String(peer.port))] {
            #expect(
                try await RawConnection.send(Request(dateTime: "26/11/2026 10:00:00", command: command), to: address)
                    == .status(0))
        }
        let client = try ClientProcess(serverPort: server.port, timeURL: time.url, directory: folder.path)
        client.send(["REGISTER carol", "CONNECT carol", "GET_FILE bob big.bin copy.bin"])
        func partials() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).filter { $0.contains(".part-") }
        }
        try await waitUntil("the download to start") { !partials().isEmpty && peer.sentBytes > 0 }
        client.process.signal(SIGINT)
        let status = try await client.process.waitForExit()
        #expect(partials().isEmpty, "left behind: \(partials())")
        #expect(!FileManager.default.fileExists(atPath: folder.file("copy.bin")))
        #expect(client.process.stdoutLines.last == "c> DISCONNECT OK")
        #expect(status == 0 || status == 1)
    }
}

private func realPath(_ path: String) -> String {
    guard let resolved = realpath(path, nil) else { return path }
    defer { free(resolved) }
    return String(cString: resolved)
}

/// A peer that answers GET_FILE with code 0 and 64 KiB, then keeps the connection open without
/// sending more, until it is closed.
final class TricklingPeer: Sendable {
    let port: Int
    private let descriptor: Int32
    private let sent = Locked<Int>(0)

    var sentBytes: Int { sent.withLock { $0 } }

    init() throws {
        let (descriptor, port) = try loopbackSocket(listening: 8)
        self.port = port
        self.descriptor = descriptor
        let listener = descriptor
        let sent = self.sent
        Thread.detachNewThread {
            while true {
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { return }
                var request = [UInt8](repeating: 0, count: 512)
                _ = read(connection, &request, request.count)
                let reply: [UInt8] = [0x30, 0] + [UInt8](repeating: 0x61, count: 65536)
                let written = write(connection, reply, reply.count)
                sent.withLock { $0 += max(0, written) }
                // Nothing more: the connection stays open until the client goes away.
                var rest = [UInt8](repeating: 0, count: 512)
                while read(connection, &rest, rest.count) > 0 {}
                close(connection)
            }
        }
    }

    deinit {
        shutdown(descriptor, Int32(SHUT_RDWR))
        close(descriptor)
    }
}
