import Foundation
import P2PTestSupport
import Testing

/// An interrupted GET_FILE between real client processes continues where it stopped.
@Suite(.serialized) struct ResumeTests {
    static let size = 32 << 20

    /// A server, a time service, alice serving `big.bin` (capped at 8 MiB/s, so that a download
    /// lasts long enough to be cut), and a folder for bob.
    struct Setup {
        let folder: TemporaryDirectory
        let server: ServerProcess
        let time: TimeProcess
        var content: [UInt8]

        static func with(_ body: (inout Setup) async throws -> Void) async throws {
            let folder = try TemporaryDirectory("resume")
            defer { folder.remove() }
            for name in ["alice", "bob"] {
                try FileManager.default.createDirectory(atPath: folder.file(name), withIntermediateDirectories: true)
            }
            let server = try await ServerProcess(dataDirectory: folder.file("storage"))
            let time = try await TimeProcess()
            var setup = Setup(
                folder: folder, server: server, time: time, content: RangedDownloadTests.randomBytes(size))
            try Data(setup.content).write(to: URL(fileURLWithPath: folder.file("alice/big.bin")))
            do {
                try await body(&setup)
            } catch {
                await server.stop()
                await time.stop()
                throw error
            }
            await server.stop()
            await time.stop()
        }

        func client(_ who: String, _ arguments: [String] = []) throws -> ClientProcess {
            try ClientProcess(
                serverPort: server.port, timeURL: time.url, directory: folder.file(who), extraArguments: arguments)
        }

        /// alice, connected and serving big.bin.
        func alice(capped: Bool, first: Bool) async throws -> ClientProcess {
            let alice = try client("alice", capped ? ["--upload-limit", "8M"] : [])
            // A killed client never said DISCONNECT: its control connection ended with it, which
            // took alice offline; its successor connects again.
            if !first {
                try await waitUntil("alice taken offline") {
                    server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE alice") }
                }
            }
            for command in first ? ["REGISTER alice", "CONNECT alice", "PUBLISH big.bin data"] : ["CONNECT alice"] {
                let line = try await alice.run(command)
                #expect(line.hasSuffix(" OK"), "\(command): \(line)")
            }
            return alice
        }

        /// Waits until bob's partial file holds at least one whole chunk.
        func waitForAChunk() async throws {
            let record = folder.file("bob/.copy.bin.p2p-partial.info")
            try await waitUntil("a chunk at bob", timeout: 30) {
                ((try? String(contentsOfFile: record, encoding: .utf8)) ?? "").contains("\ndone 0")
            }
        }

        var copy: [UInt8] { (try? Array(Data(contentsOf: URL(fileURLWithPath: folder.file("bob/copy.bin"))))) ?? [] }
    }

    /// bob continues from what arrived before: says so, fetches the rest, verifies the whole.
    static func expectResumed(_ bob: ClientProcess, _ setup: Setup) async throws {
        #expect(try await bob.run("GET_FILE alice big.bin copy.bin", timeout: 60) == "c> GET_FILE OK")
        expectSameBytes(setup.copy, setup.content)
        let line = try #require(bob.process.stderrLines.first { $0.contains("continuing big.bin: ") })
        let already = try #require(Int(line.split(separator: ": ").last!.split(separator: " ").first!))
        #expect(already >= 4 << 20, "\(line)")
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: setup.folder.file("bob")) == ["copy.bin"],
            "nothing but the file is left")
    }

    @Test func continuesAfterTheOwnerIsKilled() async throws {
        try await Setup.with { setup in
            let alice = try await setup.alice(capped: true, first: true)
            let bob = try setup.client("bob")
            #expect(try await bob.run("REGISTER bob") == "c> REGISTER OK")
            #expect(try await bob.run("CONNECT bob") == "c> CONNECT OK")
            bob.send(["GET_FILE alice big.bin copy.bin"])
            try await setup.waitForAChunk()
            alice.process.signal(SIGKILL)
            try await bob.waitFor("c> GET_FILE FAIL", timeout: 30)
            #expect(!FileManager.default.fileExists(atPath: setup.folder.file("bob/copy.bin")))

            let again = try await setup.alice(capped: false, first: false)
            try await Self.expectResumed(bob, setup)
            _ = try await bob.finish()
            _ = try await again.finish()
        }
    }

    @Test func continuesAfterCtrlC() async throws {
        try await Setup.with { setup in
            let alice = try await setup.alice(capped: true, first: true)
            let bob = try setup.client("bob")
            bob.send(["REGISTER bob", "CONNECT bob", "GET_FILE alice big.bin copy.bin"])
            try await setup.waitForAChunk()
            bob.process.signal(SIGINT)
            _ = try await bob.process.waitForExit(timeout: 30)
            #expect(bob.process.stderrLines.contains { $0.contains("what arrived is kept") })

            let later = try setup.client("bob")
            #expect(try await later.run("CONNECT bob") == "c> CONNECT OK")
            try await Self.expectResumed(later, setup)
            _ = try await later.finish()
            _ = try await alice.finish()
        }
    }

    @Test func aFileThatChangedAtTheOwnerStartsOver() async throws {
        try await Setup.with { setup in
            let alice = try await setup.alice(capped: true, first: true)
            let bob = try setup.client("bob")
            bob.send(["REGISTER bob", "CONNECT bob", "GET_FILE alice big.bin copy.bin"])
            try await setup.waitForAChunk()
            alice.process.signal(SIGKILL)
            try await bob.waitFor("c> GET_FILE FAIL", timeout: 30)

            setup.content = RangedDownloadTests.randomBytes(Self.size)
            try Data(setup.content).write(to: URL(fileURLWithPath: setup.folder.file("alice/big.bin")))
            let again = try await setup.alice(capped: false, first: false)
            #expect(try await bob.run("GET_FILE alice big.bin copy.bin", timeout: 60) == "c> GET_FILE OK")
            expectSameBytes(setup.copy, setup.content)
            #expect(bob.process.stderrLines.contains { $0.contains("changed at the peer") })
            #expect(!bob.process.stderrLines.contains { $0.contains("continuing") })
            _ = try await bob.finish()
            _ = try await again.finish()
        }
    }
}
