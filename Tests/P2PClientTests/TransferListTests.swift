import Foundation
import P2PTestSupport
import Testing

@testable import P2PClient

/// Issue 45: the shell's TRANSFERS, the list the web face shows too: each download and upload
/// with its state, progress and whether its bytes were verified.
@Suite struct TransferListTests {
    @Test func aDownloadAndAnUploadAreListedOnBothSides() async throws {
        try await AcceptanceTests.Environment.with { environment in
            let ownerFolder = try environment.clientFolder("owner")
            let content = Data(repeating: 7, count: 100_000)
            try content.write(to: URL(fileURLWithPath: "\(ownerFolder)/notes.bin"))
            let owner = try environment.client("owner")
            for command in ["REGISTER alice", "CONNECT alice", "PUBLISH notes.bin my notes"] {
                #expect(try await owner.run(command) == "c> \(command.split(separator: " ")[0]) OK")
            }
            let lines = try await environment.run(
                [
                    "REGISTER bob", "CONNECT bob", "GET_FILE alice notes.bin copy.bin",
                    "GET_FILE alice missing.bin nothing.bin", "TRANSFERS",
                ], in: "downloader")
            let listed = Array(lines.drop { $0 != "c> TRANSFERS OK" }.dropFirst().prefix(2))
            #expect(listed.count == 2, "\(lines)")
            #expect(listed.first?.hasPrefix("1 download notes.bin from alice: 97.7 KiB of 97.7 KiB (100%), ") == true)
            #expect(listed.first?.hasSuffix(", done, verified") == true, "\(listed)")
            #expect(listed.last?.hasPrefix("2 download missing.bin from alice: 0 B, ") == true, "\(listed)")
            #expect(listed.last?.hasSuffix(", FILE NOT EXIST") == true, "\(listed)")

            let before = owner.process.stdoutLines.count
            #expect(try await owner.run("TRANSFERS") == "c> TRANSFERS OK")
            try await waitUntil("the upload listed") { owner.process.stdoutLines.count >= before + 2 }
            let upload = owner.process.stdoutLines[before + 1]
            #expect(upload.hasPrefix("1 upload notes.bin to "), "\(upload)")
            #expect(upload.contains(": 97.7 KiB of 97.7 KiB (100%), ") && upload.hasSuffix(", done"), "\(upload)")
            _ = try await owner.finish()
        }
    }

    /// GET_FOLDER: every file under the folder, subfolders too, into a folder of its name; a
    /// name the owner published that would lead out of it refuses the folder, writing nothing.
    @Test func aFolderIsDownloadedIntoAFolderOfItsName() async throws {
        try await AcceptanceTests.Environment.with { environment in
            let ownerFolder = try environment.clientFolder("owner")
            for (name, text) in [("music/a.txt", "a"), ("music/live/b.txt", "b"), ("other.txt", "o")] {
                let path = "\(ownerFolder)/\(name)"
                try FileManager.default.createDirectory(
                    atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            }
            let owner = try environment.client("owner")
            for command in ["REGISTER alice", "CONNECT alice", "SHARE ."] {
                #expect(try await owner.run(command).hasSuffix(" OK"))
            }
            let downloader = try environment.client("downloader")
            for command in ["REGISTER bob", "CONNECT bob"] {
                #expect(try await downloader.run(command).hasSuffix(" OK"))
            }
            #expect(try await downloader.run("GET_FOLDER alice music") == "c> GET_FOLDER OK")
            let here = environment.folder.file("downloader")
            #expect(try String(contentsOfFile: "\(here)/music/a.txt", encoding: .utf8) == "a")
            #expect(try String(contentsOfFile: "\(here)/music/live/b.txt", encoding: .utf8) == "b")
            #expect(!FileManager.default.fileExists(atPath: "\(here)/other.txt"))

            // Someone publishes, in alice's name, a name climbing out of the folder.
            #expect(try await owner.run("PUBLISH music/../../escape.txt x") == "c> PUBLISH OK")
            #expect(try await downloader.run("GET_FOLDER alice music") == "c> GET_FOLDER FAIL")
            #expect(downloader.process.stderrLines.contains { $0.contains("not a plain path inside the folder") })
            #expect(!FileManager.default.fileExists(atPath: environment.folder.file("escape.txt")))
            #expect(try await downloader.run("GET_FOLDER alice nothing-here") == "c> GET_FOLDER FAIL")
            _ = try await downloader.finish()
            _ = try await owner.finish()
        }
    }

    /// WISH: a saved search that matches a file published later fetches it, once, however
    /// many times it runs again.
    @Test func aWishFetchesAFilePublishedLaterOnce() async throws {
        try await AcceptanceTests.Environment.with { environment in
            let ownerFolder = try environment.clientFolder("owner")
            try Data("orange sky".utf8).write(to: URL(fileURLWithPath: "\(ownerFolder)/sunset.txt"))
            let owner = try environment.client("owner")
            for command in ["REGISTER alice", "CONNECT alice"] {
                #expect(try await owner.run(command).hasSuffix(" OK"))
            }
            let downloader = try ClientProcess(
                serverPort: environment.serverPort, timeURL: environment.time.url,
                directory: try environment.clientFolder("downloader"), extraArguments: ["--wishlist-interval", "0.3"])
            for command in ["REGISTER bob", "CONNECT bob", "WISH sunset"] {
                #expect(try await downloader.run(command).hasSuffix(" OK"))
            }
            let copy = environment.folder.file("downloader/sunset.txt")
            #expect(!FileManager.default.fileExists(atPath: copy))
            #expect(try await owner.run("PUBLISH sunset.txt the evening sky") == "c> PUBLISH OK")
            try await waitUntil("the wished file fetched", timeout: 20) {
                (try? String(contentsOfFile: copy, encoding: .utf8)) == "orange sky"
            }
            // Gone from here, it is not fetched again by the runs that follow.
            try FileManager.default.removeItem(atPath: copy)
            func runs() async throws -> Int {
                let before = downloader.process.stdoutLines.count
                #expect(try await downloader.run("WISHES") == "c> WISHES OK")
                var line = ""
                try await waitUntil("the wish listed") {
                    line = downloader.process.stdoutLines.dropFirst(before + 1).first ?? ""
                    return !line.isEmpty
                }
                #expect(line.hasPrefix("1 \"sunset\" fetch, 1 matches, searched "), "\(line)")
                return Int(line.split(separator: " ").dropFirst(6).first ?? "") ?? 0
            }
            let then = try await runs()
            try await waitUntil("three more runs") { try await runs() >= then + 3 }
            #expect(!FileManager.default.fileExists(atPath: copy))
            let before = downloader.process.stdoutLines.count
            #expect(try await downloader.run("TRANSFERS") == "c> TRANSFERS OK")
            try await waitUntil("the transfer listed") { downloader.process.stdoutLines.count > before + 1 }
            let listed = downloader.process.stdoutLines.dropFirst(before + 1).filter { $0.contains(" sunset.txt ") }
            #expect(listed.count == 1, "\(listed)")
            _ = try await downloader.finish()
            _ = try await owner.finish()
        }
    }

    @Test func endedTransfersAreKeptToABound() {
        let list = TransferList(keptEnded: 3)
        let running = list.start(.upload, file: "long.iso", peers: ["198.18.3.2:4000"], total: 1 << 30)
        for index in 0..<10 {
            let id = list.start(.download, file: "f\(index)", peers: ["alice"])
            list.progress(id, bytes: 10, total: 10)
            list.end(id, .done(verified: true))
        }
        // The one under way stays, whatever ended after it.
        #expect(list.all.map(\.id) == [running, 9, 10, 11])
        // The last three to end are kept.
        list.end(running, .failed(reason: "cut"))
        #expect(list.all.map(\.id) == [running, 10, 11])
    }

    /// Names come from the directory and from peers: a TRANSFERS line cannot be forged or
    /// drive the terminal through them.
    @Test func namesFromOthersArePrintedEscaped() {
        let list = TransferList()
        let id = list.start(.download, file: "a\nc> GET_FILE OK\u{1B}[2J", peers: ["eve\r"])
        list.end(id, .failed(reason: "peer said \u{7}"))
        let line = ClientSession.transferLine(list.transfer(id)!)
        #expect(!line.contains("\n") && !line.contains("\r") && !line.contains("\u{1B}") && !line.contains("\u{7}"))
        #expect(line.hasPrefix("1 download a"), "\(line)")
    }
}
