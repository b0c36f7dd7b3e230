import Foundation
import P2PClient
import P2PProtocol
import P2PTestSupport
import Testing

@Suite struct ConsoleCommandTests {
    @Test func parsesEveryCommand() throws {
        #expect(try ConsoleCommand.parse("REGISTER alice") == .register(user: "alice"))
        #expect(try ConsoleCommand.parse("  UNREGISTER\talice ") == .unregister(user: "alice"))
        #expect(try ConsoleCommand.parse("CONNECT alice") == .connect(user: "alice"))
        #expect(try ConsoleCommand.parse("DISCONNECT alice") == .disconnect(user: "alice"))
        #expect(try ConsoleCommand.parse("DELETE a.txt") == .delete(fileName: "a.txt"))
        #expect(try ConsoleCommand.parse("LIST_USERS") == .listUsers)
        #expect(try ConsoleCommand.parse("LIST_CONTENT bob") == .listContent(user: "bob"))
        #expect(
            try ConsoleCommand.parse("GET_FILE bob a.txt b.txt")
                == .getFile(user: "bob", remoteName: "a.txt", localName: "b.txt"))
        #expect(try ConsoleCommand.parse("QUIT") == .quit)
        #expect(try ConsoleCommand.parse("SEARCH lecture  notes") == .search(query: "lecture notes"))
        #expect(throws: ConsoleCommand.ParseError.usage("SEARCH <words...>")) { try ConsoleCommand.parse("SEARCH") }
        #expect(try ConsoleCommand.parse("SHARE  My Photos ") == .share(folder: "My Photos"))
        #expect(try ConsoleCommand.parse("unshare photos") == .unshare(folder: "photos"))
        #expect(try ConsoleCommand.parse("SHARED") == .shared)
        #expect(throws: ConsoleCommand.ParseError.usage("SHARE <folder>")) { try ConsoleCommand.parse("SHARE") }
        #expect(throws: ConsoleCommand.ParseError.usage("SHARED")) { try ConsoleCommand.parse("SHARED x") }
    }

    @Test func publishKeepsTheWholeDescription() throws {
        #expect(
            try ConsoleCommand.parse("PUBLISH notes.txt my  notes, v2 ")
                == .publish(fileName: "notes.txt", description: "my  notes, v2"))
    }

    @Test func wrongArgumentsGiveTheUsage() {
        #expect(throws: ConsoleCommand.ParseError.usage("REGISTER <userName>")) { try ConsoleCommand.parse("REGISTER") }
        #expect(throws: ConsoleCommand.ParseError.usage("REGISTER <userName>")) {
            try ConsoleCommand.parse("REGISTER a b")
        }
        #expect(throws: ConsoleCommand.ParseError.usage("PUBLISH <fileName> <description>")) {
            try ConsoleCommand.parse("PUBLISH onlyname")
        }
        #expect(throws: ConsoleCommand.ParseError.usage("LIST_USERS")) { try ConsoleCommand.parse("LIST_USERS x") }
    }

    @Test func commandNamesAreAcceptedInAnyCase() throws {
        #expect(try ConsoleCommand.parse("register alice") == .register(user: "alice"))
        #expect(try ConsoleCommand.parse("List_Users") == .listUsers)
        #expect(
            try ConsoleCommand.parse("publish Notes.txt My Notes")
                == .publish(fileName: "Notes.txt", description: "My Notes"),
            "arguments keep their case")
        #expect(throws: ConsoleCommand.ParseError.unknown("registre")) { try ConsoleCommand.parse("registre alice") }
        #expect(throws: ConsoleCommand.ParseError.empty) { try ConsoleCommand.parse("   ") }
    }

    @Test func helpInItsUsualSpellings() throws {
        for spelling in ["help", "HELP", "?", "--help", "Help"] {
            #expect(try ConsoleCommand.parse(spelling) == .help)
        }
        #expect(ConsoleCommand.helpLines.count > ConsoleCommand.names.count - 1)
        #expect(
            ConsoleCommand.ParseError.unknown("FOO").description == "unknown command FOO; type help for the commands")
    }

    @Test func resultLinesFollowTheSpec() {
        #expect(ResultLine.line(.register, 0) == "REGISTER OK")
        #expect(ResultLine.line(.register, 1) == "USERNAME IN USE")
        #expect(ResultLine.line(.register, nil) == "REGISTER FAIL")
        #expect(ResultLine.line(.connect, 3) == "CONNECT FAIL")
        #expect(ResultLine.line(.disconnect, 3) == "DISCONNECT FAIL")
        #expect(ResultLine.line(.disconnect, nil) == "DISCONNECT FAIL")
        #expect(ResultLine.line(.listContent, 3) == "LIST_CONTENT FAIL, REMOTE USER DOES NOT EXIST")
        #expect(ResultLine.line(.listContent, 4) == "LIST_CONTENT FAIL")
        #expect(ResultLine.line(.delete, 3) == "DELETE FAIL, CONTENT NOT PUBLISHED")
        #expect(ResultLine.line(.search, 0) == "SEARCH OK")
        #expect(ResultLine.line(.search, 1) == "SEARCH FAIL, USER DOES NOT EXIST")
        #expect(ResultLine.line(.search, 2) == "SEARCH FAIL, USER NOT CONNECTED")
        #expect(ResultLine.line(.search, 3) == "SEARCH FAIL")
    }
}

/// The client process with parts of the system missing.
@Suite struct ClientResilienceTests {
    @Test func timeServiceDownFallsBackToTheLocalClockAndSaysSoOnce() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let timeServiceDown = try ClosedPort()
        let client = try ClientProcess(
            serverPort: server.port, timeURL: "http://127.0.0.1:\(timeServiceDown.port)", directory: folder.path)
        client.send(["REGISTER alice", "CONNECT alice", "LIST_USERS"])
        let lines = try await client.finish()
        await server.stop()
        #expect(lines.prefix(3) == ["c> REGISTER OK", "c> CONNECT OK", "c> LIST_USERS OK"])
        let complaints = client.process.stderrLines.filter { $0.contains("using the local clock") }
        #expect(complaints.count == 1, "stderr: \(client.process.stderrLines)")
    }

    @Test func badInputAtThePromptKeepsTheShellGoing() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let time = try await TimeProcess()
        let lines = try await ClientProcess.run(
            ["FOO", "REGISTER", "REGISTER \(String(repeating: "x", count: 300))", "REGISTER bob"],
            serverPort: server.port, timeURL: time.url, directory: folder.path)
        await server.stop()
        await time.stop()
        #expect(lines[0].hasPrefix("c> unknown command FOO"))
        #expect(lines[1] == "c> usage: REGISTER <userName>")
        #expect(lines[2] == "c> REGISTER FAIL", "an oversized name is refused before it is sent")
        #expect(lines[3] == "c> REGISTER OK")
    }

    @Test func quitDisconnectsTheConnectedUser() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let time = try await TimeProcess()
        _ = try await ClientProcess.run(
            ["REGISTER alice", "CONNECT alice", "QUIT"], serverPort: server.port, timeURL: time.url,
            directory: folder.path)
        // alice is offline again: connecting her from another client works.
        let lines = try await ClientProcess.run(
            ["CONNECT alice"], serverPort: server.port, timeURL: time.url, directory: folder.path)
        await server.stop()
        await time.stop()
        #expect(lines == ["c> CONNECT OK", "c> DISCONNECT OK"], "end of input disconnects, as QUIT")
    }
}
