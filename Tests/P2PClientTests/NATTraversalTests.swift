import Foundation
import P2PTestSupport
import Testing

/// Users behind NAT (issue 30), in a simulated internet (``SimulatedInternet``): the directory
/// server and the time service on a public host, users behind home routers doing NAT
/// (nftables masquerade, unsolicited connections from outside dropped), and users with public
/// addresses. Every program is the real one, run in its namespace.
@Suite(.serialized, .enabled(if: SimulatedInternet.isAvailable, "needs root and network namespaces"))
struct NATTraversalTests {
    final class World {
        let internet: SimulatedInternet
        let folder: TemporaryDirectory
        let serverHost: SimulatedInternet.Host
        let time: TimeProcess
        let server: ServerProcess

        init(serverArguments: [String] = []) async throws {
            internet = try SimulatedInternet()
            folder = try TemporaryDirectory()
            serverHost = try internet.addPublicHost("srv")
            time = try await TimeProcess(host: "0.0.0.0", inside: serverHost)
            server = try await ServerProcess(
                dataDirectory: folder.file("storage"), arguments: ["--no-oplog"] + serverArguments, host: "0.0.0.0",
                inside: serverHost)
        }

        func client(_ name: String, on host: SimulatedInternet.Host, arguments: [String] = []) throws -> ClientProcess {
            let directory = folder.file(name)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            return try ClientProcess(
                serverPort: server.port, timeURL: "http://\(serverHost.address):\(time.port)", directory: directory,
                extraArguments: arguments, serverHost: serverHost.address, inside: host)
        }

        /// A client on a host of its own (behind a NAT of the given kind, or public when nil)
        /// whose user is registered and connected, after it ran `then`.
        func connectedUser(
            _ name: String, behind nat: NAT?, then commands: [String] = [], arguments: [String] = []
        ) async throws -> ClientProcess {
            let host =
                try nat.map { try internet.addHomeHost(name, symmetric: $0 == .symmetric) }
                ?? internet.addPublicHost(name)
            let client = try self.client(name, on: host, arguments: arguments)
            for command in ["REGISTER \(name)", "CONNECT \(name)"] + commands {
                let line = try await client.run(command)
                #expect(line.hasSuffix(" OK"), "\(name): \(command): \(line)")
            }
            return client
        }

        func stop() async {
            await server.stop()
            await time.stop()
            internet.remove()
            folder.remove()
        }
    }

    enum NAT { case ordinary, symmetric }

    /// Whether `owner` (run with --verbose) logged serving `name` over TLS to the client whose
    /// key is `downloader`'s: the transfer was end to end, whatever carried it.
    static func servedOverTLS(_ name: String, by owner: ClientProcess, to downloader: ClientProcess) async throws
        -> Bool
    {
        let key = try await KeyTests.fingerprint(of: downloader)
        return owner.process.stderrLines.contains {
            $0.contains("GET_FILE \(name) to ") && $0.contains("(TLS, key \(key))")
        }
    }

    static func randomFile(_ size: Int, at path: String) throws -> Data {
        var content = Data(count: size)
        content.withUnsafeMutableBytes { bytes in
            for index in stride(from: 0, to: bytes.count, by: 8) {
                bytes.storeBytes(of: UInt64.random(in: 0...UInt64.max), toByteOffset: index, as: UInt64.self)
            }
        }
        try content.write(to: URL(fileURLWithPath: path))
        return content
    }

    @Test func aUserBehindNATStaysListedAndLeavesWithinSecondsOfItsProcess() async throws {
        // Interval x failures: 1 s.
        let world = try await World(serverArguments: ["--peer-check-interval", "0.5", "--peer-check-failures", "2"])
        defer { world.internet.remove() }
        let alice = try world.client("alice", on: try world.internet.addHomeHost("alice"))
        #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
        #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
        // The same home setup without the control connection: what happened to everybody before.
        let carol = try world.client(
            "carol", on: try world.internet.addHomeHost("carol"), arguments: ["--no-control-connection"])
        #expect(try await carol.run("REGISTER carol") == "c> REGISTER OK")
        #expect(try await carol.run("CONNECT carol") == "c> CONNECT OK")
        let watcher = try world.client("watcher", on: try world.internet.addPublicHost("watcher"))
        #expect(try await watcher.run("REGISTER watcher") == "c> REGISTER OK")
        #expect(try await watcher.run("CONNECT watcher") == "c> CONNECT OK")

        try await waitUntil("the server's reachability check of alice") {
            world.server.process.stderrLines.contains {
                $0.contains("alice at 198.18.") && $0.contains("not reachable")
            }
        }
        try await waitUntil("carol expired by the peer checks") {
            world.server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE carol") }
        }
        // Ten times interval x failures, asked again and again; then killed.
        try await ControlConnectionTests.staysListedThenLeavesWhenKilled(
            alice, "alice", for: .seconds(10), askingWith: watcher)
        #expect(!world.server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE alice: its peer") })
        _ = try await watcher.finish()
        _ = try await carol.finish()
        await world.stop()
    }

    @Test func aPublicDownloaderGetsAFileFromAUserBehindNATReversed() async throws {
        let world = try await World()
        defer { world.internet.remove() }
        try FileManager.default.createDirectory(atPath: world.folder.file("alice"), withIntermediateDirectories: true)
        let content = try Self.randomFile(8 << 20, at: world.folder.file("alice/movie.bin"))
        let alice = try await world.connectedUser(
            "alice", behind: .ordinary, then: ["PUBLISH movie.bin holidays"], arguments: ["--verbose"])
        let bob = try await world.connectedUser("bob", behind: nil)

        let before = world.internet.bytes(through: world.serverHost)
        #expect(try await bob.run("GET_FILE alice movie.bin copy.bin", timeout: 60) == "c> GET_FILE OK")
        let through = world.internet.bytes(through: world.serverHost) - before
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: world.folder.file("bob/copy.bin"))), content)
        #expect(bob.process.stderrLines.contains { $0.contains("alice is behind a NAT") && $0.contains("reversed") })
        // The server's host saw the requests, not the file.
        #expect(through < 64 * 1024, "\(through) bytes went through the server's host")
        #expect(try await Self.servedOverTLS("movie.bin", by: alice, to: bob))

        for client in [alice, bob] { _ = try await client.finish() }
        await world.stop()
    }

    @Test func twoUsersBehindOrdinaryNATsPunchAConnection() async throws {
        let world = try await World()
        defer { world.internet.remove() }
        try FileManager.default.createDirectory(atPath: world.folder.file("alice"), withIntermediateDirectories: true)
        let content = try Self.randomFile(8 << 20, at: world.folder.file("alice/movie.bin"))
        let alice = try await world.connectedUser(
            "alice", behind: .ordinary, then: ["PUBLISH movie.bin holidays"], arguments: ["--verbose"])
        let dave = try await world.connectedUser("dave", behind: .ordinary)

        let tries = 5
        for attempt in 1...tries {
            let before = world.internet.bytes(through: world.serverHost)
            let line = try await dave.run("GET_FILE alice movie.bin copy\(attempt).bin", timeout: 60)
            let through = world.internet.bytes(through: world.serverHost) - before
            #expect(line == "c> GET_FILE OK", "try \(attempt): \(dave.process.stderrLines.suffix(3))")
            try expectSameBytes(
                Data(contentsOf: URL(fileURLWithPath: world.folder.file("dave/copy\(attempt).bin"))), content)
            #expect(through < 64 * 1024, "\(through) bytes went through the server's host")
        }
        #expect(dave.process.stderrLines.filter { $0.contains("punching a connection") }.count == tries)
        #expect(try await Self.servedOverTLS("movie.bin", by: alice, to: dave))
        for client in [alice, dave] { _ = try await client.finish() }
        await world.stop()
    }

    @Test func twoUsersBehindSymmetricNATsAreToldWhyNot() async throws {
        let world = try await World()
        defer { world.internet.remove() }
        try FileManager.default.createDirectory(atPath: world.folder.file("alice"), withIntermediateDirectories: true)
        _ = try Self.randomFile(1 << 20, at: world.folder.file("alice/movie.bin"))
        let alice = try await world.connectedUser("alice", behind: .symmetric, then: ["PUBLISH movie.bin holidays"])
        let dave = try await world.connectedUser("dave", behind: .symmetric)
        #expect(try await dave.run("GET_FILE alice movie.bin copy.bin", timeout: 60) == "c> GET_FILE FAIL")
        #expect(
            dave.process.stderrLines.contains { $0.contains("no connection punched") }, "\(dave.process.stderrLines)")
        #expect(
            dave.process.stderrLines.contains {
                $0.contains("does not relay transfers") && $0.contains("--relay-limit")
            })
        #expect(!FileManager.default.fileExists(atPath: world.folder.file("dave/copy.bin")))
        // Asked again, it says so at once instead of trying for seconds.
        let again = ContinuousClock.now
        #expect(try await dave.run("GET_FILE alice movie.bin copy.bin", timeout: 60) == "c> GET_FILE FAIL")
        #expect(ContinuousClock.now - again < .seconds(3))
        for client in [alice, dave] { _ = try await client.finish() }
        await world.stop()
    }

    /// Two users behind symmetric NATs, through a server that relays at most `limit` bytes a second.
    func relayedWorld(limit: Int, size: Int = 8 << 20) async throws -> (World, ClientProcess, ClientProcess, Data) {
        let world = try await World(serverArguments: ["--relay-limit", String(limit), "--http-port", "0"])
        try FileManager.default.createDirectory(atPath: world.folder.file("alice"), withIntermediateDirectories: true)
        let content = try Self.randomFile(size, at: world.folder.file("alice/movie.bin"))
        try Data("small".utf8).write(to: URL(fileURLWithPath: world.folder.file("alice/small.txt")))
        let alice = try await world.connectedUser(
            "alice", behind: .symmetric, then: ["PUBLISH movie.bin holidays", "PUBLISH small.txt note"],
            arguments: ["--verbose"])
        let dave = try await world.connectedUser("dave", behind: .symmetric)
        // The first GET_FILE finds that no connection can be punched, and relays.
        #expect(try await dave.run("GET_FILE alice small.txt small.txt", timeout: 60) == "c> GET_FILE OK")
        #expect(dave.process.stderrLines.contains { $0.contains("relaying through the directory server") })
        return (world, alice, dave, content)
    }

    @Test func twoUsersBehindSymmetricNATsAreRelayedAtTheOperatorsRate() async throws {
        let limit = 2 << 20
        let (world, alice, dave, content) = try await relayedWorld(limit: limit)
        defer { world.internet.remove() }
        let start = ContinuousClock.now
        #expect(try await dave.run("GET_FILE alice movie.bin copy.bin", timeout: 60) == "c> GET_FILE OK")
        let took = ContinuousClock.now - start
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: world.folder.file("dave/copy.bin"))), content)
        let seconds = Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
        let rate = Double(content.count) / seconds
        #expect(
            abs(rate / Double(limit) - 1) < 0.1,
            "relayed at \(Int(rate)) bytes/s, the limit is \(limit); \(world.server.process.stderrLines.suffix(6))")
        // End to end: the relay carried the TLS both ends ran, and only its ciphertext.
        #expect(try await Self.servedOverTLS("movie.bin", by: alice, to: dave))
        for client in [alice, dave] { _ = try await client.finish() }
        await world.stop()
    }

    /// What the relay receives of a relayed transfer is not the file: alice reaches the server
    /// through socat on the server's host (`-v` writes out everything that crosses it), so every
    /// byte she sends the relay is on record. The file is text; in clear it would be readable there.
    @Test func theRelaySeesOnlyCiphertext() async throws {
        let world = try await World(serverArguments: ["--relay-limit", "8000000"])
        defer { world.internet.remove() }
        let tapPort = world.server.port == 4300 ? 4301 : 4300
        let (executable, arguments) = SimulatedInternet.command(
            in: world.serverHost, "/usr/bin/socat",
            ["-d", "-d", "-v", "TCP-LISTEN:\(tapPort),fork,reuseaddr", "TCP:127.0.0.1:\(world.server.port)"])
        let tap = try ChildProcess(executable, arguments, directory: world.folder.path)
        try await waitUntil("socat listening") { tap.stderrLines.contains { $0.contains("listening on") } }
        let folder = world.folder.file("alice")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let content = Data(String(repeating: "alice's plain words, line after line.\n", count: 30_000).utf8)
        try content.write(to: URL(fileURLWithPath: "\(folder)/notes.txt"))
        let alice = try ClientProcess(
            serverPort: tapPort, timeURL: "http://\(world.serverHost.address):\(world.time.port)", directory: folder,
            extraArguments: ["--verbose"], serverHost: world.serverHost.address,
            inside: try world.internet.addHomeHost("alice", symmetric: true))
        for command in ["REGISTER alice", "CONNECT alice", "PUBLISH notes.txt words"] {
            #expect(try await alice.run(command).hasSuffix(" OK"), "\(command)")
        }
        let dave = try await world.connectedUser("dave", behind: .symmetric)
        #expect(try await dave.run("GET_FILE alice notes.txt copy.txt", timeout: 60) == "c> GET_FILE OK")
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: world.folder.file("dave/copy.txt"))), content)
        #expect(dave.process.stderrLines.contains { $0.contains("relaying through the directory server") })
        #expect(try await Self.servedOverTLS("notes.txt", by: alice, to: dave))

        // Everything alice sent through the tap (socat's "> <date> <time>  length=N" headers,
        // written wherever the data before them ended), the relayed file among it, and none of
        // the file's words.
        let header = /> \d{4}\/\d{2}\/\d{2} [0-9:.]+  length=(\d+)/
        let sent = tap.stderrLines.joined(separator: "\n").matches(of: header).compactMap { Int($0.output.1) }.reduce(
            0, +)
        #expect(sent > content.count, "only \(sent) bytes from alice crossed the tap")
        #expect(!tap.stderrLines.contains { $0.contains("plain words") })
        for client in [alice, dave] { _ = try await client.finish() }
        await tap.stop()
        await world.stop()
    }

    @Test func aRelayedTransferCutInTheMiddleLeavesNoFile() async throws {
        // More than the kernel's socket buffers on the way hold (several MiB each): when the
        // owner is killed, part of the file has not left it yet.
        let (world, alice, dave, _) = try await relayedWorld(limit: 4 << 20, size: 48 << 20)
        defer { world.internet.remove() }
        let before = dave.process.stdoutLines.count
        dave.send(["GET_FILE alice movie.bin copy.bin"])
        try await waitUntil("a chunk relayed to dave", timeout: 30) {
            ((try? String(contentsOfFile: world.folder.file("dave/.copy.bin.p2p-partial.info"), encoding: .utf8)) ?? "")
                .contains("\ndone 0")
        }
        alice.process.signal(SIGKILL)
        try await waitUntil("GET_FILE's result", timeout: 60) {
            dave.process.stdoutLines.dropFirst(before).contains { $0.hasPrefix("c> GET_FILE") }
        }
        #expect(
            dave.process.stdoutLines.dropFirst(before).contains("c> GET_FILE FAIL"),
            "dave: \(dave.process.stderrLines.suffix(4)); server: \(world.server.process.stderrLines.suffix(4))")
        #expect(!FileManager.default.fileExists(atPath: world.folder.file("dave/copy.bin")))
        _ = try await dave.finish()
        await world.stop()
    }
}
