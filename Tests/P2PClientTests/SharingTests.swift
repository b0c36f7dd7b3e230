import Foundation
import P2PClient
import P2PProtocol
import P2PTestSupport
import Testing

/// What a peer of ours serves (only what its user published) and SHARE (a folder published
/// whole and kept in line), with real `p2p-server`, `p2p-time` and `p2p-client` processes.
@Suite struct SharingTests {
    /// A server, a time service, a home folder for alice, and a way to look at the directory.
    struct Environment {
        let folder: TemporaryDirectory
        let server: ServerProcess
        let time: TimeProcess
        var home: String { folder.file("alice") }
        var directory: DirectoryClient { DirectoryClient(host: "127.0.0.1", port: server.port) }

        static func with(_ body: (Environment) async throws -> Void) async throws {
            let folder = try TemporaryDirectory("sharing")
            defer { folder.remove() }
            let server = try await ServerProcess(dataDirectory: folder.file("storage"))
            let time = try await TimeProcess()
            let environment = Environment(folder: folder, server: server, time: time)
            try FileManager.default.createDirectory(atPath: environment.home, withIntermediateDirectories: true)
            // The watcher looks at the directory; it is connected so that it may.
            _ = try await environment.send(.register(user: "watcher"))
            _ = try await environment.send(.connect(user: "watcher", port: "9"))
            do {
                try await body(environment)
            } catch {
                await server.stop()
                await time.stop()
                throw error
            }
            await server.stop()
            await time.stop()
        }

        @discardableResult
        func send(_ command: Request.Command) async throws -> Reply {
            try await directory.send(Request(dateTime: "03/12/2026 10:00:00", command: command))
        }

        /// alice's published files, name -> description.
        func published() async throws -> [String: String] {
            guard case .content(let files) = try await send(.listContent(user: "watcher", owner: "alice")) else {
                return [:]
            }
            return Dictionary(files.map { ($0.name, $0.description) }, uniquingKeysWith: { $1 })
        }

        /// What alice's peer answers to GET_FILE `name`.
        func fetch(_ name: String) async throws -> [UInt8] {
            guard case .users(let users) = try await send(.listUsers(user: "watcher")),
                let alice = users.first(where: { $0.name == "alice" }), let port = Int(alice.port)
            else { throw SetupError("alice is not connected") }
            return try exchangeBytes(port: port, sending: Array("GET_FILE\0\(name)\0".utf8))
        }

        func client(_ arguments: [String] = []) throws -> ClientProcess {
            try ClientProcess(serverPort: server.port, timeURL: time.url, directory: home, extraArguments: arguments)
        }

        func write(_ relative: String, _ text: String) throws {
            let path = "\(home)/\(relative)"
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        }
    }

    static let notFound = Array("1\0".utf8)
    static func found(_ text: String) -> [UInt8] { Array("0\0\(text)".utf8) }

    /// The issue's scenario: only what alice published is served, in this run or an earlier one.
    @Test func servesOnlyWhatWasPublished() async throws {
        try await Environment.with { env in
            try env.write("notes.txt", "my notes")
            try env.write("secret.txt", "do not share")
            try env.write(".ssh/id_ed25519", "PRIVATE KEY")
            try env.write("withdrawn.txt", "was public once")
            let outside = env.folder.file("outside")
            try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
            try Data("elsewhere".utf8).write(to: URL(fileURLWithPath: "\(outside)/abs.txt"))
            try FileManager.default.createSymbolicLink(
                atPath: "\(env.home)/link-out.txt", withDestinationPath: "\(outside)/abs.txt")

            let alice = try env.client()
            for command in [
                "REGISTER alice", "CONNECT alice", "PUBLISH notes.txt my notes", "PUBLISH link-out.txt a link",
                "PUBLISH \(outside)/abs.txt a file elsewhere", "PUBLISH withdrawn.txt soon gone",
                "DELETE withdrawn.txt",
            ] {
                #expect(try await alice.run(command).hasSuffix(" OK"), "\(command)")
            }
            #expect(try await env.fetch("notes.txt") == Self.found("my notes"))
            #expect(try await env.fetch("\(outside)/abs.txt") == Self.found("elsewhere"))
            for name in [
                "secret.txt", ".ssh/id_ed25519", "withdrawn.txt", "link-out.txt", "\(env.home)/secret.txt",
                "/etc/hostname",
            ] {
                #expect(try await env.fetch(name) == Self.notFound, "\(name) must not be served")
            }
            _ = try await alice.finish()

            // A later run: CONNECT alone serves what alice published before, and nothing more.
            let again = try env.client()
            #expect(try await again.run("CONNECT alice") == "c> CONNECT OK")
            #expect(try await env.fetch("notes.txt") == Self.found("my notes"))
            #expect(try await env.fetch("secret.txt") == Self.notFound)
            #expect(again.process.stderrLines.contains { $0.contains("nothing else is served") })
            #expect(try await again.finish() == ["c> CONNECT OK", "c> DISCONNECT OK"])
        }
    }

    /// SHARE publishes the regular, non-hidden files whose names the protocol carries, says what
    /// it skipped, and keeps to one result line.
    @Test func shareOfATree() async throws {
        try await Environment.with { env in
            try env.write("photos/beach.jpg", "jpeg bytes")
            try env.write("photos/2026/june/hill.png", "png")
            try env.write("photos/notes", "no extension")
            try env.write("photos/.thumbs/beach.jpg", "thumb")
            try env.write("photos/.hidden.jpg", "hidden")
            try env.write("photos/with space.jpg", "space")
            let longFolder = String(repeating: "d", count: 200)
            try env.write("photos/\(longFolder)/\(String(repeating: "f", count: 60)).txt", "too long a name")
            mkfifo("\(env.home)/photos/pipe", 0o644)
            try FileManager.default.createSymbolicLink(
                atPath: "\(env.home)/photos/link.jpg", withDestinationPath: "beach.jpg")
            try env.write("elsewhere.txt", "not under photos")

            let alice = try env.client()
            alice.send(["REGISTER alice", "CONNECT alice", "SHARE photos", "SHARED"])
            try await alice.waitFor("c> SHARED OK")
            try await waitUntil("the summary line") { alice.process.stdoutLines.count >= 5 }
            #expect(
                try await env.published() == [
                    "photos/beach.jpg": "JPEG image, 10 B", "photos/2026/june/hill.png": "PNG image, 3 B",
                    "photos/notes": "file, 12 B",
                ])
            #expect(try await env.fetch("photos/2026/june/hill.png") == Self.found("png"))
            #expect(try await env.fetch("photos/.thumbs/beach.jpg") == Self.notFound)
            #expect(try await env.fetch("elsewhere.txt") == Self.notFound)
            let lines = try await alice.finish()
            #expect(Array(lines.prefix(4)) == ["c> REGISTER OK", "c> CONNECT OK", "c> SHARE OK", "c> SHARED OK"])
            let summary = lines[4]
            #expect(summary.hasPrefix("\(env.home)/photos: 3 files published"), "\(summary)")
            #expect(
                summary.contains(
                    """
                    6 skipped (2 hidden, 1 a space in the name, 1 name over 255 bytes, 1 symbolic link, 1 not a \
                    regular file)
                    """
                ),
                "\(summary)")
            #expect(lines.last == "c> DISCONNECT OK")
        }
    }

    /// While connected, the folder is followed: what is added, renamed or removed reaches the
    /// directory within 2 s; a changed file keeps its entry; nothing is printed for it.
    @Test func sharedFolderIsFollowed() async throws {
        try await Environment.with { env in
            try env.write("photos/a.jpg", "a")
            try env.write("photos/kept.txt", "first version")
            let alice = try env.client()
            alice.send(["REGISTER alice", "CONNECT alice", "SHARE photos"])
            try await alice.waitFor("c> SHARE OK")
            #expect(Set(try await env.published().keys) == ["photos/a.jpg", "photos/kept.txt"])
            let photos = "\(env.home)/photos"

            try env.write("photos/new.txt", "new")
            try await waitUntil("a new file published", timeout: 2) {
                try await env.published()["photos/new.txt"] != nil
            }
            #expect(try await env.fetch("photos/new.txt") == Self.found("new"))

            try FileManager.default.moveItem(atPath: "\(photos)/new.txt", toPath: "\(photos)/renamed.txt")
            try await waitUntil("a renamed file under its new name", timeout: 2) {
                let names = try await env.published()
                return names["photos/renamed.txt"] != nil && names["photos/new.txt"] == nil
            }
            #expect(try await env.fetch("photos/new.txt") == Self.notFound)

            try FileManager.default.removeItem(atPath: "\(photos)/a.jpg")
            try await waitUntil("a removed file deleted", timeout: 2) {
                try await env.published()["photos/a.jpg"] == nil
            }

            try env.write("photos/album/c.jpg", "c")
            try await waitUntil("a new folder's file published", timeout: 2) {
                try await env.published()["photos/album/c.jpg"] != nil
            }
            try FileManager.default.moveItem(atPath: "\(photos)/album", toPath: "\(photos)/trip")
            try env.write("photos/trip/d.jpg", "d")
            try await waitUntil("a renamed folder's files under the new name", timeout: 2) {
                let names = try await env.published()
                return names["photos/trip/c.jpg"] != nil && names["photos/trip/d.jpg"] != nil
                    && names["photos/album/c.jpg"] == nil
            }

            let before = try await env.published()["photos/kept.txt"]
            try env.write("photos/kept.txt", "second, longer version")
            try env.write("photos/marker.txt", "m")
            try await waitUntil("the marker published", timeout: 2) {
                try await env.published()["photos/marker.txt"] != nil
            }
            #expect(try await env.published()["photos/kept.txt"] == before)
            #expect(try await env.fetch("photos/kept.txt") == Self.found("second, longer version"))

            // Scripted output: the commands' result lines only.
            #expect(try await alice.finish() == ["c> REGISTER OK", "c> CONNECT OK", "c> SHARE OK", "c> DISCONNECT OK"])
        }
    }

    /// Files removed while offline are deleted at the next CONNECT and new ones published, in
    /// the same client (DISCONNECT, CONNECT) and in a later run with `--share`.
    @Test func offlineChangesAreTakenInAtConnect() async throws {
        try await Environment.with { env in
            try env.write("music/one.mp3", "1")
            try env.write("music/two.mp3", "2")
            let alice = try env.client(["--share", "music"])
            #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            #expect(
                try await env.published() == ["music/one.mp3": "MP3 audio, 1 B", "music/two.mp3": "MP3 audio, 1 B"])
            #expect(try await alice.run("DISCONNECT alice") == "c> DISCONNECT OK")

            try FileManager.default.removeItem(atPath: "\(env.home)/music/two.mp3")
            try env.write("music/three.mp3", "3")
            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            #expect(Set(try await env.published().keys) == ["music/one.mp3", "music/three.mp3"])
            _ = try await alice.finish()

            try FileManager.default.removeItem(atPath: "\(env.home)/music/one.mp3")
            let later = try env.client(["--share", "music"])
            #expect(try await later.run("CONNECT alice") == "c> CONNECT OK")
            #expect(Set(try await env.published().keys) == ["music/three.mp3"])
            #expect(try await env.fetch("music/three.mp3") == Self.found("3"))
            // Followed from CONNECT on as well.
            try env.write("music/four.mp3", "4")
            try await waitUntil("a file added after CONNECT published", timeout: 2) {
                try await env.published()["music/four.mp3"] != nil
            }
            _ = try await later.finish()
        }
    }

    /// A typed PUBLISH replaces SHARE's description; a file DELETEd by hand is not published
    /// again while its folder stays shared; UNSHARE takes the folder's files out.
    @Test func typedCommandsWinOverSharing() async throws {
        try await Environment.with { env in
            try env.write("docs/a.pdf", "a")
            try env.write("docs/b.pdf", "b")
            let alice = try env.client()
            for command in ["REGISTER alice", "CONNECT alice", "SHARE docs", "PUBLISH docs/a.pdf the syllabus"] {
                #expect(try await alice.run(command).hasSuffix(" OK"), "\(command)")
            }
            #expect(try await env.published()["docs/a.pdf"] == "the syllabus")
            #expect(try await alice.run("DELETE docs/b.pdf") == "c> DELETE OK")
            try env.write("docs/b.pdf", "b, changed")
            try env.write("docs/c.pdf", "c")
            try await waitUntil("c.pdf published", timeout: 2) { try await env.published()["docs/c.pdf"] != nil }
            #expect(try await env.published()["docs/b.pdf"] == nil)
            #expect(try await env.fetch("docs/b.pdf") == Self.notFound)

            #expect(try await alice.run("UNSHARE docs") == "c> UNSHARE OK")
            #expect(try await env.published().isEmpty)
            #expect(try await env.fetch("docs/a.pdf") == Self.notFound)
            #expect(try await alice.run("UNSHARE docs") == "c> UNSHARE FAIL")
            #expect(try await alice.run("SHARE nowhere") == "c> SHARE FAIL")
            _ = try await alice.finish()
        }
    }
}
