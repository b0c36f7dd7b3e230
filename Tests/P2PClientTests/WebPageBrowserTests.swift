import Foundation
import P2PTestSupport
import Testing

/// The directory's web page in a real browser: Debian's chromium, headless (setup.sh installs
/// it), loads the pages of a real `p2p-server` after real clients registered, connected and
/// published, and the test reads what a person would see: the DOM after the page ran.
@Suite struct WebPageBrowserTests {
    static let chromium = "/usr/bin/chromium"

    /// The page at `url` as the browser ended up with it (`--dump-dom`).
    static func seen(_ url: String, profile: String, screenshot: String? = nil) async throws -> String {
        var arguments = [
            "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=\(profile)", "--window-size=900,600",
        ]
        arguments.append(screenshot.map { "--screenshot=\($0)" } ?? "--dump-dom")
        let browser = try ChildProcess(chromium, arguments + [url])
        let status = try await browser.waitForExit(timeout: 60)
        guard status == 0 else { throw SetupError("chromium exited with \(status): \(browser.stderrLines.suffix(5))") }
        return browser.stdoutLines.joined(separator: "\n")
    }

    @Test func aPersonSeesUsersFilesAndSearchResultsWithHostileTextEscaped() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let time = try await TimeProcess()
        let server = try await ServerProcess(
            dataDirectory: folder.file("storage"), arguments: ["--no-oplog", "--http-port", "0"])
        let line = try await server.process.waitForLine { $0.hasPrefix("s> web page: ") }
        let page = String(line.dropFirst("s> web page: ".count))
        try FileManager.default.createDirectory(atPath: folder.file("alice"), withIntermediateDirectories: true)
        let alice = try ClientProcess(serverPort: server.port, timeURL: time.url, directory: folder.file("alice"))
        #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
        #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
        #expect(try await alice.run("PUBLISH lecture-notes.pdf week one of algebra") == "c> PUBLISH OK")
        #expect(
            try await alice.run(#"PUBLISH trap.html <script>document.title='pwned'</script> "><img src=x>"#)
                == "c> PUBLISH OK")

        let home = try await Self.seen(page, profile: folder.file("profile"))
        #expect(home.contains("1 user registered, 1 online, 2 files published."))
        #expect(home.contains(#"<a href="/user?name=alice">alice</a></td><td>127.0.0.1</td>"#))

        let files = try await Self.seen(page + "user?name=alice", profile: folder.file("profile"))
        #expect(files.contains("<td>lecture-notes.pdf</td><td>week one of algebra</td>"))
        // The hostile description is text on the page: no script ran, no element was made.
        #expect(files.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt; \"&gt;&lt;img src=x&gt;"))
        #expect(!files.contains("pwned</title>"))
        #expect(!files.contains("<img"))

        let search = try await Self.seen(page + "search?q=LECT+alg", profile: folder.file("profile"))
        #expect(search.contains("<td>lecture-notes.pdf</td><td>week one of algebra</td>"))
        #expect(!search.contains("trap.html"))

        // A picture of the page for people (kept with the build, not in the repository).
        let picture = "\(packageRoot)/.build/web-page.png"
        _ = try await Self.seen(page, profile: folder.file("profile"), screenshot: picture)
        #expect(FileManager.default.fileExists(atPath: picture))

        _ = try await alice.finish()
        await server.stop()
        await time.stop()
    }
}
