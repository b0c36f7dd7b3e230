import Foundation
import NIOCore
import P2PProtocol
import P2PTestSupport
import Testing

/// Issue 43 with real processes: an outsider on another loopback address (127.0.0.5) sends
/// exactly what an attacker would, to the directory server and to alice's client.
@Suite struct OutsiderTests {
    static let outsider = "127.0.0.5"
    static let dateTime = "07/12/2026 10:00:00"

    /// Alice's client in its share folder, the server and the time service.
    struct Setting {
        let folder: TemporaryDirectory
        let time: TimeProcess
        let server: ServerProcess
        let share: String
        let secret: String

        init(_ name: String, serverArguments: [String] = ["--no-oplog"]) async throws {
            folder = try TemporaryDirectory(name)
            share = folder.file("alice")
            try FileManager.default.createDirectory(atPath: share, withIntermediateDirectories: true)
            try Data("my notes".utf8).write(to: URL(fileURLWithPath: share + "/notes.txt"))
            try Data("dot".utf8).write(to: URL(fileURLWithPath: share + "/.hidden"))
            secret = folder.file("id_ed25519")
            try Data("PRIVATE KEY".utf8).write(to: URL(fileURLWithPath: secret))
            time = try await TimeProcess()
            server = try await ServerProcess(dataDirectory: folder.file("storage"), arguments: serverArguments)
        }

        func alice(_ arguments: [String] = []) throws -> ClientProcess {
            try ClientProcess(serverPort: server.port, timeURL: time.url, directory: share, extraArguments: arguments)
        }

        /// A request from the outsider's address: its code.
        func outsider(_ command: Request.Command) async throws -> ResultCode? {
            try await RawConnection.send(
                Request(dateTime: OutsiderTests.dateTime, command: command),
                to: SocketAddress(ipAddress: "127.0.0.1", port: server.port),
                from: SocketAddress(ipAddress: OutsiderTests.outsider, port: 0)
            ).code
        }

        /// What alice's client answers the outsider for `name`.
        func getFile(_ name: String, port: Int) async throws -> [UInt8] {
            try await RawConnection.exchange(
                RawConnection.fields("GET_FILE", name), with: SocketAddress(ipAddress: "127.0.0.1", port: port),
                from: SocketAddress(ipAddress: OutsiderTests.outsider, port: 0))
        }

        func stop() async {
            await server.stop()
            await time.stop()
            folder.remove()
        }
    }

    /// Runs `body` in a fresh setting and stops its programs, also when it fails.
    static func with(
        _ name: String, serverArguments: [String] = ["--no-oplog"], _ body: (Setting) async throws -> Void
    ) async throws {
        let setting = try await Setting(name, serverArguments: serverArguments)
        do {
            try await body(setting)
        } catch {
            await setting.stop()
            throw error
        }
        await setting.stop()
    }

    /// The port alice's client serves peers on, from its own LIST_USERS.
    static func peerPort(of client: ClientProcess) async throws -> Int {
        let before = client.process.stdoutLines.count
        #expect(try await client.run("LIST_USERS") == "c> LIST_USERS OK")
        var port: Int?
        try await waitUntil("alice in the list") {
            port = client.process.stdoutLines.dropFirst(before).first { $0.hasPrefix("alice ") }
                .flatMap { $0.split(separator: " ").last.flatMap { Int($0) } }
            return port != nil
        }
        return port!
    }

    /// Attack 1: while alice is offline, the outsider publishes her private key and a hidden
    /// file in her name. At her next CONNECT her client deletes both from the directory and
    /// serves neither; what she published herself is served, in this run and the next.
    /// (Her name is not bound to a key here, as with a third-party client: with a key the
    /// outsider's requests are refused outright, ``KeyTests``.)
    @Test func namesPublishedInHerAbsenceAreNeitherServedNorKept() async throws {
        try await Self.with("outsider-publish") { setting in
            var alice = try setting.alice(["--no-identity"])
            #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            #expect(try await alice.run("PUBLISH notes.txt my notes") == "c> PUBLISH OK")
            #expect(try await alice.run("DISCONNECT alice") == "c> DISCONNECT OK")

            #expect(try await setting.outsider(.connect(user: "alice", port: "9999")) == 0)
            #expect(
                try await setting.outsider(.publish(user: "alice", fileName: setting.secret, description: "x")) == 0)
            #expect(try await setting.outsider(.publish(user: "alice", fileName: ".hidden", description: "x")) == 0)
            #expect(try await setting.outsider(.disconnect(user: "alice")) == 0)

            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            try await waitUntil("the cleanup said on stderr") {
                alice.process.stderrLines.contains { $0.contains("never published") && $0.contains("2 deleted") }
            }
            var port = try await Self.peerPort(of: alice)
            #expect(try await setting.getFile(setting.secret, port: port) == Array("1\0".utf8))
            #expect(try await setting.getFile(".hidden", port: port) == Array("1\0".utf8))
            #expect(try await setting.getFile("notes.txt", port: port) == Array("0\0my notes".utf8))
            let before = alice.process.stdoutLines.count
            #expect(try await alice.run("LIST_CONTENT alice") == "c> LIST_CONTENT OK")
            try await waitUntil("the list") {
                alice.process.stdoutLines.dropFirst(before).contains("notes.txt \"my notes\"")
            }
            #expect(
                !alice.process.stdoutLines.dropFirst(before).contains {
                    $0.contains("id_ed25519") || $0.contains(".hidden")
                })
            _ = try await alice.finish()

            // The next run remembers what alice published.
            alice = try setting.alice(["--no-identity"])
            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            port = try await Self.peerPort(of: alice)
            #expect(try await setting.getFile("notes.txt", port: port) == Array("0\0my notes".utf8))
            #expect(!alice.process.stderrLines.contains { $0.contains("never published") })
            _ = try await alice.finish()
        }
    }

    /// Attacks 2 and 3: a range ending past Int64 and two reversed connections with one token.
    /// Alice's client lives on, serves, and answers DISCONNECT within 2 s.
    @Test func oneOrTwoRequestsNeitherKillNorFreezeHerClient() async throws {
        try await Self.with("outsider-crash") { setting in
            let alice = try setting.alice()
            #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            #expect(try await alice.run("PUBLISH notes.txt my notes") == "c> PUBLISH OK")
            let port = try await Self.peerPort(of: alice)
            let overflow = try await setting.getFile(
                "/.p2p-reserved/v1/range/9223372036854775807-1/notes.txt", port: port)
            #expect(overflow == Array("1\0".utf8) || overflow == Array("2\0".utf8))
            // Two connections presenting one token: one is parked for a download that never
            // asks, the other closed at once (or after the first's 10 s, should it come first).
            let name = "/.p2p-reserved/v1/reversed/x"
            let closed = Locked(0)
            for _ in 0..<2 {
                Task {
                    _ = try? await setting.getFile(name, port: port)
                    closed.withLock { $0 += 1 }
                }
            }
            try await waitUntil("one of them closed", timeout: 15) { closed.value >= 1 }
            #expect(try await setting.getFile("notes.txt", port: port) == Array("0\0my notes".utf8))
            #expect(try await alice.run("DISCONNECT alice", timeout: 2) == "c> DISCONNECT OK")
            try await waitUntil("both closed", timeout: 15) { closed.value == 2 }
            #expect(!alice.process.stderrLines.contains { $0.contains("CONTINUATION MISUSE") })
            let (_, status) = try await alice.finishWithStatus()
            #expect(status == 0)
        }
    }

    /// Attack 5: behind `--proxy-protocol`, a PROXY header from an address `--proxy-from` does not
    /// name is not believed: the connection is closed unanswered and changes nothing.
    @Test func aProxyHeaderFromOutsideTheBalancersIsNotBelieved() async throws {
        try await Self.with(
            "outsider-proxy", serverArguments: ["--no-oplog", "--proxy-protocol", "--proxy-from", "127.0.0.2"]
        ) { setting in
            var request = ByteBuffer()
            try RequestEncoder.encode(
                Request(dateTime: Self.dateTime, command: .register(user: "mallory")), into: &request)
            let header = Array("PROXY TCP4 192.0.2.7 127.0.0.1 5555 4242\r\n".utf8)
            let bytes = header + Array(request.readableBytesView)
            let address = try SocketAddress(ipAddress: "127.0.0.1", port: setting.server.port)
            let fromOutsider = try? await RawConnection.exchange(
                bytes, with: address, from: SocketAddress(ipAddress: Self.outsider, port: 0))
            #expect(fromOutsider == nil || fromOutsider == [], "\(String(describing: fromOutsider))")
            try await waitUntil("the refusal logged") {
                setting.server.process.stderrLines.contains {
                    $0.contains("--proxy-from") && $0.contains(Self.outsider)
                }
            }
            // The balancer's address is believed, and the user is registered only then.
            let fromBalancer = try await RawConnection.exchange(
                bytes, with: address, from: SocketAddress(ipAddress: "127.0.0.2", port: 0))
            #expect(fromBalancer == Array("0\0".utf8))
            try await waitUntil("mallory registered") {
                setting.server.process.stdoutLines.contains { $0.hasPrefix("s> REGISTER FROM mallory") }
            }
            #expect(setting.server.process.stdoutLines.filter { $0.hasPrefix("s> REGISTER FROM mallory") }.count == 1)
        }
    }
}
