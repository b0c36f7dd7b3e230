import Foundation
import NIOCore
import P2PClient
import P2PIdentity
import P2PProtocol
import P2PTestSupport
import Testing

/// Issue 44, with real processes: a name bound to a client's key is changed only by requests
/// that key proves, from any address; the operator can unbind it.
@Suite(.serialized) struct KeyTests {
    /// Another machine's address, on loopback.
    static let outsider = "127.0.0.5"
    static let dateTime = "01/01/2026 00:00:00"

    final class Setting: Sendable {
        let folder: TemporaryDirectory
        let time: TimeProcess
        let server: Locked<ServerProcess>

        init(_ name: String) async throws {
            folder = try TemporaryDirectory(name)
            time = try await TimeProcess()
            server = Locked(try await ServerProcess(dataDirectory: folder.file("storage")))
        }

        var port: Int { server.withLock { $0.port } }

        /// A client in a folder of its own, with the key in `key` (a file name in the setting).
        func client(_ folderName: String, key: String, arguments: [String] = []) throws -> ClientProcess {
            let directory = folder.file(folderName)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            return try ClientProcess(
                serverPort: port, timeURL: time.url, directory: directory,
                extraArguments: ["--identity", folder.file(key)] + arguments)
        }

        /// A plain request (as a third-party client sends) from `address`: its code.
        func plain(_ command: Request.Command, from address: String) async throws -> ResultCode? {
            try await RawConnection.send(
                Request(dateTime: KeyTests.dateTime, command: command),
                to: SocketAddress(ipAddress: "127.0.0.1", port: port), from: SocketAddress(ipAddress: address, port: 0)
            ).code
        }

        func stop() async {
            await server.withLock { $0 }.stop()
            await time.stop()
            folder.remove()
        }
    }

    static func with(_ name: String, _ body: (Setting) async throws -> Void) async throws {
        let setting = try await Setting(name)
        do {
            try await body(setting)
        } catch {
            await setting.stop()
            throw error
        }
        await setting.stop()
    }

    /// The lines `client` printed after the first `after`, once `line` is among them.
    static func lines(of client: ClientProcess, after: Int, until line: String) async throws -> [String] {
        try await waitUntil("\(line) from the client") { client.process.stdoutLines.dropFirst(after).contains(line) }
        return Array(client.process.stdoutLines.dropFirst(after))
    }

    /// While alice is offline, the outsider's CONNECT, PUBLISH, DELETE, UNREGISTER and REGISTER
    /// of her name are all refused, with each operation's codes; she comes back to her files.
    /// (Without a key the same CONNECT succeeds: ``OutsiderTests``.)
    @Test func anOfflineKeyedUserCannotBeTakenOverFromAnywhere() async throws {
        try await Self.with("keys-takeover") { setting in
            let alice = try setting.client("alice", key: "alice.key")
            #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            #expect(try await alice.run("PUBLISH notes.txt my notes") == "c> PUBLISH OK")
            #expect(try await alice.run("DISCONNECT alice") == "c> DISCONNECT OK")

            for address in [Self.outsider, "127.0.0.1"] {
                #expect(try await setting.plain(.connect(user: "alice", port: "9999"), from: address) == 3)
                #expect(
                    try await setting.plain(.publish(user: "alice", fileName: "x", description: "x"), from: address)
                        == 4)
                #expect(try await setting.plain(.delete(user: "alice", fileName: "notes.txt"), from: address) == 4)
                #expect(try await setting.plain(.unregister(user: "alice"), from: address) == 2)
                #expect(try await setting.plain(.register(user: "alice"), from: address) == 1)
            }
            // The server says why on its stderr (nothing of the key in it).
            let server = setting.server.withLock { $0 }
            try await waitUntil("the refusal logged") {
                server.process.stderrLines.contains {
                    $0.contains("CONNECT of alice refused: the user is bound to a key and the request was plain")
                }
            }
            // Another client of ours, with another key, fares no better, and says why.
            let mallory = try setting.client("mallory", key: "mallory.key")
            #expect(try await mallory.run("CONNECT alice") == "c> CONNECT FAIL")
            try await waitUntil("the reason on stderr") {
                mallory.process.stderrLines.contains { $0.contains("binds alice to another key") }
            }
            #expect(try await mallory.run("UNREGISTER alice") == "c> UNREGISTER FAIL")
            _ = try await mallory.finish()

            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            let before = alice.process.stdoutLines.count
            #expect(try await alice.run("LIST_CONTENT alice") == "c> LIST_CONTENT OK")
            let listed = try await Self.lines(of: alice, after: before, until: "notes.txt \"my notes\"")
            #expect(!listed.contains { $0.hasPrefix("x ") })
            _ = try await alice.finish()
        }
    }

    /// alice and bob behind one address (a household's NAT), each with a key: neither can
    /// disconnect, change or take the control connection of the other, though the address is
    /// the one the other connected from.
    @Test func neighboursBehindOneAddressCannotActForEachOther() async throws {
        try await Self.with("keys-neighbours") { setting in
            let alice = try setting.client("alice", key: "alice.key")
            let bob = try setting.client("bob", key: "bob.key")
            #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            #expect(try await bob.run("REGISTER bob") == "c> REGISTER OK")
            #expect(try await bob.run("CONNECT bob") == "c> CONNECT OK")

            // Plain requests from the address both connected from.
            #expect(try await setting.plain(.disconnect(user: "alice"), from: "127.0.0.1") == 3)
            #expect(
                try await setting.plain(.publish(user: "alice", fileName: "y", description: "y"), from: "127.0.0.1")
                    == 4)
            let control = try await RawConnection.exchange(
                RawConnection.fields("CONTROL", Self.dateTime, "alice"),
                with: SocketAddress(ipAddress: "127.0.0.1", port: setting.port))
            #expect(control == Array("3\0".utf8), "a plain CONTROL for a keyed user is refused")
            // Through bob's own client.
            #expect(try await bob.run("DISCONNECT alice") == "c> DISCONNECT FAIL")

            // alice is still online, and her own client still changes her.
            let before = bob.process.stdoutLines.count
            #expect(try await bob.run("LIST_USERS") == "c> LIST_USERS OK")
            try await waitUntil("both listed") {
                let lines = bob.process.stdoutLines.dropFirst(before)
                return lines.contains { $0.hasPrefix("alice ") } && lines.contains { $0.hasPrefix("bob ") }
            }
            #expect(try await alice.run("DISCONNECT alice") == "c> DISCONNECT OK")
            _ = try await alice.finish()
            _ = try await bob.finish()
        }
    }

    /// alice lost her key: the operator unbinds her name (the server stopped, as SQLite needs),
    /// and her new key binds it at her next CONNECT; the old key no longer changes it.
    @Test func theOperatorUnbindsANameAndTheNextKeyBindsIt() async throws {
        try await Self.with("keys-unbind") { setting in
            let old = try setting.client("alice", key: "lost.key")
            #expect(try await old.run("REGISTER alice") == "c> REGISTER OK")
            #expect(try await old.run("CONNECT alice") == "c> CONNECT OK")
            #expect(try await old.run("PUBLISH notes.txt my notes") == "c> PUBLISH OK")
            _ = try await old.finish()

            let renewed = try setting.client("alice", key: "new.key")
            #expect(try await renewed.run("CONNECT alice") == "c> CONNECT FAIL")
            _ = try await renewed.finish()

            // (Back on the same port: the client keeps what it published per server address.)
            let port = setting.port
            await setting.server.withLock { $0 }.stop()
            let unbind = try ChildProcess(
                builtProduct("p2p-server"), ["unbind", "alice", "--data-dir", setting.folder.file("storage")])
            #expect(try await unbind.waitForExit() == 0)
            #expect(unbind.stdoutLines.contains { $0.contains("alice is no longer bound to the key") })
            let missing = try ChildProcess(
                builtProduct("p2p-server"), ["unbind", "nobody", "--data-dir", setting.folder.file("storage")])
            #expect(try await missing.waitForExit() == 1)
            let restarted = try await ServerProcess(dataDirectory: setting.folder.file("storage"), port: port)
            setting.server.withLock { $0 = restarted }

            let again = try setting.client("alice", key: "new.key")
            #expect(try await again.run("CONNECT alice") == "c> CONNECT OK")
            let before = again.process.stdoutLines.count
            #expect(try await again.run("LIST_CONTENT alice") == "c> LIST_CONTENT OK")
            _ = try await Self.lines(of: again, after: before, until: "notes.txt \"my notes\"")
            #expect(try await again.run("DISCONNECT alice") == "c> DISCONNECT OK")
            _ = try await again.finish()

            let lost = try setting.client("alice", key: "lost.key")
            #expect(try await lost.run("CONNECT alice") == "c> CONNECT FAIL")
            _ = try await lost.finish()
        }
    }

    /// The fingerprint `client` shows with IDENTITY.
    static func fingerprint(of client: ClientProcess) async throws -> String {
        let before = client.process.stdoutLines.count
        #expect(try await client.run("IDENTITY") == "c> IDENTITY OK")
        var line: String?
        try await waitUntil("the fingerprint line") {
            line = client.process.stdoutLines.dropFirst(before).first { $0.hasPrefix("fingerprint ") }
            return line != nil
        }
        return String(line!.dropFirst("fingerprint ".count))
    }

    /// Between two clients of ours, GET_FILE runs over TLS pinned to the key the directory
    /// holds for the owner; the owner's --verbose log names the downloader's key. When the
    /// directory lists the owner at an address where another client of ours listens (her old
    /// address, say, now someone else's), the download fails and says why: nothing is fetched
    /// from the impostor, though it serves a file of that name.
    @Test func downloadsArePinnedToTheOwnersKey() async throws {
        try await Self.with("keys-pinned") { setting in
            let content = Data(String(repeating: "alice's notes\n", count: 5000).utf8)
            try FileManager.default.createDirectory(
                atPath: setting.folder.file("alice"), withIntermediateDirectories: true)
            try content.write(to: URL(fileURLWithPath: setting.folder.file("alice/notes.txt")))
            let alice = try setting.client("alice", key: "alice.key", arguments: ["--verbose"])
            for command in ["REGISTER alice", "CONNECT alice", "PUBLISH notes.txt my notes"] {
                #expect(try await alice.run(command).hasSuffix(" OK"), "\(command)")
            }
            let bob = try setting.client("bob", key: "bob.key")
            #expect(try await bob.run("REGISTER bob") == "c> REGISTER OK")
            #expect(try await bob.run("CONNECT bob") == "c> CONNECT OK")
            let bobsKey = try await Self.fingerprint(of: bob)
            let alicesKey = try await Self.fingerprint(of: alice)
            #expect(try await bob.run("GET_FILE alice notes.txt copy.txt") == "c> GET_FILE OK")
            try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: setting.folder.file("bob/copy.txt"))), content)
            try await waitUntil("alice's log of the upload (\(alice.process.stderrLines.suffix(4)))") {
                alice.process.stderrLines.contains {
                    $0.contains("GET_FILE notes.txt to ") && $0.contains("(TLS, key \(bobsKey))")
                }
            }
            _ = try await alice.finish()

            // mallory serves a notes.txt of her own at her port; the directory is made to list
            // alice there (a CONNECT keyed by alice's key: only the port is another's).
            try FileManager.default.createDirectory(
                atPath: setting.folder.file("mallory"), withIntermediateDirectories: true)
            try Data("forged".utf8).write(to: URL(fileURLWithPath: setting.folder.file("mallory/notes.txt")))
            let mallory = try setting.client("mallory", key: "mallory.key")
            for command in ["REGISTER mallory", "CONNECT mallory", "PUBLISH notes.txt forged"] {
                #expect(try await mallory.run(command).hasSuffix(" OK"), "\(command)")
            }
            let malloryKey = try await Self.fingerprint(of: mallory)
            let directory = DirectoryClient(
                host: "127.0.0.1", port: setting.port,
                identity: try IdentityKey.load(from: setting.folder.file("alice.key")))
            let listed = try await directory.send(Request(dateTime: Self.dateTime, command: .listUsers(user: "bob")))
            guard case .users(let users) = listed, let port = users.first(where: { $0.name == "mallory" })?.port else {
                Issue.record("mallory is not listed: \(listed)")
                return
            }
            #expect(
                try await directory.send(Request(dateTime: Self.dateTime, command: .connect(user: "alice", port: port)))
                    .code == 0)

            let before = bob.process.stderrLines.count
            #expect(try await bob.run("GET_FILE alice notes.txt stolen.txt") == "c> GET_FILE FAIL")
            let said = bob.process.stderrLines.dropFirst(before).joined(separator: "\n")
            #expect(said.contains("is not alice") && said.contains(malloryKey) && said.contains(alicesKey), "\(said)")
            #expect(!FileManager.default.fileExists(atPath: setting.folder.file("bob/stolen.txt")))
            for client in [bob, mallory] { _ = try await client.finish() }
        }
    }
}
