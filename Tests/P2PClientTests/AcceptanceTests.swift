import Foundation
import P2PTestSupport
import Testing

/// The 36 cases of `shared/spec/ACCEPTANCE.md`, run as a user would: real `p2p-client`
/// processes with scripted stdin against a real `p2p-server` and `p2p-time`, each case on a
/// fresh data folder.
@Suite struct AcceptanceTests {
    /// One case: commands for one client, and the last line it must print.
    struct Case: CustomTestStringConvertible, Sendable {
        var number: Int
        var commands: [String]
        var lastLine: String
        var serverDown = false

        var testDescription: String { "case \(number): \(commands.joined(separator: "; "))" }
    }

    static let singleClientCases: [Case] = [
        Case(number: 1, commands: ["REGISTER user1"], lastLine: "c> REGISTER OK"),
        Case(number: 2, commands: ["REGISTER user1", "REGISTER user1"], lastLine: "c> USERNAME IN USE"),
        Case(number: 3, commands: ["REGISTER user1"], lastLine: "c> REGISTER FAIL", serverDown: true),
        Case(number: 4, commands: ["REGISTER user1", "UNREGISTER user1"], lastLine: "c> UNREGISTER OK"),
        Case(number: 5, commands: ["UNREGISTER user2"], lastLine: "c> USER DOES NOT EXIST"),
        Case(number: 6, commands: ["UNREGISTER user1"], lastLine: "c> UNREGISTER FAIL", serverDown: true),
        Case(number: 7, commands: ["REGISTER user1", "CONNECT user1"], lastLine: "c> CONNECT OK"),
        Case(number: 8, commands: ["CONNECT user2"], lastLine: "c> CONNECT FAIL, USER DOES NOT EXIST"),
        Case(
            number: 9, commands: ["REGISTER user1", "CONNECT user1", "CONNECT user1"],
            lastLine: "c> USER ALREADY CONNECTED"),
        Case(number: 10, commands: ["CONNECT user1"], lastLine: "c> CONNECT FAIL", serverDown: true),
        Case(
            number: 11, commands: ["REGISTER user1", "CONNECT user1", "PUBLISH file description"],
            lastLine: "c> PUBLISH OK"),
        Case(number: 12, commands: ["PUBLISH file description"], lastLine: "c> PUBLISH FAIL, USER DOES NOT EXIST"),
        Case(
            number: 13, commands: ["REGISTER user1", "PUBLISH file description"],
            lastLine: "c> PUBLISH FAIL, USER NOT CONNECTED"),
        Case(
            number: 14,
            commands: ["REGISTER user1", "CONNECT user1", "PUBLISH file description", "PUBLISH file description"],
            lastLine: "c> PUBLISH FAIL, CONTENT ALREADY PUBLISHED"),
        Case(number: 15, commands: ["PUBLISH file description"], lastLine: "c> PUBLISH FAIL", serverDown: true),
        Case(
            number: 16, commands: ["REGISTER user1", "CONNECT user1", "PUBLISH file description", "DELETE file"],
            lastLine: "c> DELETE OK"),
        Case(number: 17, commands: ["DELETE file"], lastLine: "c> DELETE FAIL, USER DOES NOT EXIST"),
        Case(number: 18, commands: ["REGISTER user1", "DELETE file"], lastLine: "c> DELETE FAIL, USER NOT CONNECTED"),
        Case(
            number: 19, commands: ["REGISTER user1", "CONNECT user1", "DELETE file"],
            lastLine: "c> DELETE FAIL, CONTENT NOT PUBLISHED"),
        Case(number: 20, commands: ["DELETE file"], lastLine: "c> DELETE FAIL", serverDown: true),
        Case(number: 22, commands: ["LIST_USERS"], lastLine: "c> LIST_USERS FAIL, USER DOES NOT EXIST"),
        Case(
            number: 23, commands: ["REGISTER user1", "LIST_USERS"], lastLine: "c> LIST_USERS FAIL, USER NOT CONNECTED"),
        Case(number: 24, commands: ["LIST_USERS"], lastLine: "c> LIST_USERS FAIL", serverDown: true),
        Case(number: 26, commands: ["LIST_CONTENT user1"], lastLine: "c> LIST_CONTENT FAIL, USER DOES NOT EXIST"),
        Case(
            number: 27, commands: ["REGISTER user1", "LIST_CONTENT user1"],
            lastLine: "c> LIST_CONTENT FAIL, USER NOT CONNECTED"),
        Case(
            number: 28, commands: ["REGISTER user2", "CONNECT user2", "LIST_CONTENT user1"],
            lastLine: "c> LIST_CONTENT FAIL, REMOTE USER DOES NOT EXIST"),
        Case(number: 29, commands: ["LIST_CONTENT user1"], lastLine: "c> LIST_CONTENT FAIL", serverDown: true),
        Case(
            number: 30, commands: ["REGISTER user1", "CONNECT user1", "DISCONNECT user1"],
            lastLine: "c> DISCONNECT OK"),
        Case(number: 31, commands: ["DISCONNECT user1"], lastLine: "c> DISCONNECT FAIL / USER DOES NOT EXIST"),
        Case(
            number: 32, commands: ["REGISTER user1", "DISCONNECT user1"],
            lastLine: "c> DISCONNECT FAIL / USER NOT CONNECTED"),
        Case(number: 33, commands: ["DISCONNECT user1"], lastLine: "c> DISCONNECT FAIL", serverDown: true),
        Case(
            number: 36, commands: ["GET_FILE user1 authors.txt copy.txt"], lastLine: "c> GET_FILE FAIL",
            serverDown: true),
    ]

    /// A fresh server (unless the case wants it down), a time service and a folder.
    struct Environment {
        let folder: TemporaryDirectory
        let time: TimeProcess
        let server: ServerProcess?
        let serverPort: Int
        /// Where the server is "down": refused, and taken by nobody else.
        let downPort: ClosedPort

        init(serverDown: Bool = false, serverArguments: [String] = ["--no-oplog"]) async throws {
            folder = try TemporaryDirectory()
            time = try await TimeProcess()
            server =
                serverDown
                ? nil : try await ServerProcess(dataDirectory: folder.file("storage"), arguments: serverArguments)
            downPort = try ClosedPort()
            serverPort = server?.port ?? downPort.port
        }

        /// A folder for one client to start in.
        func clientFolder(_ name: String) throws -> String {
            let path = folder.file(name)
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            return path
        }

        func client(_ name: String = "client") throws -> ClientProcess {
            try ClientProcess(serverPort: serverPort, timeURL: time.url, directory: try clientFolder(name))
        }

        func run(_ commands: [String], in name: String = "client") async throws -> [String] {
            try await ClientProcess.run(
                commands, serverPort: serverPort, timeURL: time.url, directory: clientFolder(name))
        }

        /// Runs `body` in a fresh environment and always tears it down.
        static func with(
            serverDown: Bool = false,
            serverArguments: [String] = ["--no-oplog"],
            _ body: (Environment) async throws -> Void
        ) async throws {
            let environment = try await Environment(serverDown: serverDown, serverArguments: serverArguments)
            do {
                try await body(environment)
            } catch {
                await environment.tearDown()
                throw error
            }
            await environment.tearDown()
        }

        func tearDown() async {
            await server?.stop()
            await time.stop()
            folder.remove()
        }
    }

    @Test(arguments: singleClientCases)
    func singleClient(_ testCase: Case) async throws {
        try await Environment.with(serverDown: testCase.serverDown) { environment in
            let (results, farewell) = splitFarewell(try await environment.run(testCase.commands), testCase)
            #expect(results.last == testCase.lastLine, "all output: \(results + farewell)")
            #expect(results.count == testCase.commands.count, "one result line per command: \(results)")
        }
    }

    /// The same cases against a server that sends raw-byte result codes.
    @Test(arguments: singleClientCases.filter { !$0.serverDown })
    func singleClientWithRawByteCodes(_ testCase: Case) async throws {
        try await Environment.with(serverArguments: ["--no-oplog", "--result-encoding", "byte"]) { environment in
            let (results, _) = splitFarewell(try await environment.run(testCase.commands), testCase)
            #expect(results.last == testCase.lastLine, "all output: \(results)")
        }
    }

    /// The result lines of a case's commands, and what end of input printed after them: the
    /// DISCONNECT line when a user was still connected (as QUIT does), else nothing.
    func splitFarewell(_ lines: [String], _ testCase: Case) -> (results: [String], farewell: [String]) {
        let results = Array(lines.prefix(testCase.commands.count))
        let farewell = Array(lines.dropFirst(testCase.commands.count))
        let stillConnected =
            results.contains("c> CONNECT OK") && !testCase.commands.contains { $0.hasPrefix("DISCONNECT") }
        #expect(farewell == (stillConnected ? ["c> DISCONNECT OK"] : []), "after the commands: \(farewell)")
        return (results, farewell)
    }

    @Test func case21ListUsersShowsBothClients() async throws {
        try await Environment.with { environment in
            let first = try environment.client("first")
            first.send(["REGISTER user1", "CONNECT user1"])
            try await first.waitFor("c> CONNECT OK")
            let lines = try await environment.run(["REGISTER user2", "CONNECT user2", "LIST_USERS"], in: "second")
            _ = try await first.finish()
            let list = try #require(lines.firstIndex(of: "c> LIST_USERS OK"), "output: \(lines)")
            #expect(lines.last == "c> DISCONNECT OK", "end of input disconnects user2")
            let users = lines[(list + 1)..<(lines.count - 1)].map { $0.split(separator: " ").map(String.init) }
            #expect(users.count == 2)
            #expect(users.map { $0[0] } == ["user1", "user2"])
            for user in users {
                #expect(
                    user.count == 3 && user[1] == "127.0.0.1" && Int(user[2]).map { (1...65535).contains($0) } == true)
            }
        }
    }

    @Test func case25ListContentShowsFilesWithDescriptions() async throws {
        try await Environment.with { environment in
            let lines = try await environment.run([
                "REGISTER user1", "CONNECT user1", "PUBLISH file1 description1", "PUBLISH file2 description2",
                "LIST_CONTENT user1",
            ])
            #expect(
                Array(lines.suffix(4)) == [
                    "c> LIST_CONTENT OK", #"file1 "description1""#, #"file2 "description2""#, "c> DISCONNECT OK",
                ])
        }
    }

    @Test func cases34And35GetFileBetweenTwoClients() async throws {
        try await Environment.with { environment in
            let firstFolder = try environment.clientFolder("first")
            let authors = Data("Written by the P2P team.\nSecond line, with UTF-8: ñ ü 日本.\n".utf8)
            try authors.write(to: URL(fileURLWithPath: "\(firstFolder)/authors.txt"))
            let first = try environment.client("first")
            first.send(["REGISTER user1", "CONNECT user1", "PUBLISH authors.txt who wrote it"])
            try await first.waitFor("c> PUBLISH OK")

            let lines = try await environment.run(
                [
                    "REGISTER user2", "CONNECT user2", "LIST_USERS", "GET_FILE user1 authors.txt copy.txt",
                    "GET_FILE user1 missing.txt copy2.txt",
                ], in: "second")
            _ = try await first.finish()
            let secondFolder = try environment.clientFolder("second")
            #expect(lines.contains("c> GET_FILE OK"), "output: \(lines)")
            try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: "\(secondFolder)/copy.txt")), authors)
            #expect(lines.suffix(2) == ["c> GET_FILE FAIL / FILE NOT EXIST", "c> DISCONNECT OK"])
            // Nothing is left behind for the failed one, not even a temporary file.
            #expect(try FileManager.default.contentsOfDirectory(atPath: secondFolder) == ["copy.txt"])
        }
    }
}
