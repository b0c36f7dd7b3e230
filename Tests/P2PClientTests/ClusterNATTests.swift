import Foundation
import P2PTestSupport
import Testing

/// Users behind NAT with the directory as `make run-cluster` runs it (issue 47): in the
/// simulated internet (``SimulatedInternet``), the server host runs PostgreSQL, three directory
/// servers sharing it with `--proxy-protocol`, and HAProxy in front of them sending each the
/// client's address and port in a PROXY header; the users' clients reach only HAProxy.
@Suite(.serialized, .enabled(if: SimulatedInternet.isAvailable, "needs root and network namespaces"))
struct ClusterNATTests {
    final class Cluster {
        let internet: SimulatedInternet
        let folder: TemporaryDirectory
        let serverHost: SimulatedInternet.Host
        let postgres: PostgresServer
        let time: TimeProcess
        let servers: [ServerProcess]
        let balancer: HAProxyProcess

        init(servers count: Int = 3, arguments: [String] = []) async throws {
            internet = try SimulatedInternet()
            folder = try TemporaryDirectory()
            serverHost = try internet.addPublicHost("srv")
            postgres = try await PostgresServer.start(inside: serverHost)
            let database = try await postgres.newDatabase()
            time = try await TimeProcess(host: "0.0.0.0", inside: serverHost)
            var servers: [ServerProcess] = []
            for index in 0..<count {
                servers.append(
                    try await ServerProcess(
                        dataDirectory: folder.file("server\(index)"),
                        arguments: ["--no-oplog", "--proxy-protocol", "--store", database.connectionString]
                            + arguments,
                        inside: serverHost))
            }
            self.servers = servers
            balancer = try await HAProxyProcess(backends: servers.map(\.port), bind: "0.0.0.0", inside: serverHost)
        }

        /// A client behind a NAT of its own whose user is registered and connected, after it
        /// ran `then`.
        func connectedUser(
            _ name: String, symmetric: Bool = false, then commands: [String] = [], arguments: [String] = []
        ) async throws -> ClientProcess {
            let host = try internet.addHomeHost(name, symmetric: symmetric)
            let directory = folder.file(name)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let client = try ClientProcess(
                serverPort: balancer.port, timeURL: "http://\(serverHost.address):\(time.port)",
                directory: directory, extraArguments: arguments, serverHost: serverHost.address, inside: host)
            for command in ["REGISTER \(name)", "CONNECT \(name)"] + commands {
                let line = try await client.run(command)
                #expect(line.hasSuffix(" OK"), "\(name): \(command): \(line)")
            }
            return client
        }

        /// How many `CONTROL` requests of `user` each server has served.
        func controls(of user: String) -> [Int] {
            servers.map { server in server.process.stdoutLines.filter { $0 == "s> CONTROL FROM \(user)" }.count }
        }

        /// The server (its index) that took the control connection `user` opened after the
        /// counts were `before`.
        func controlServer(of user: String, after before: [Int]) async throws -> Int {
            var landed: Int?
            try await waitUntil("\(user)'s control connection served") {
                let now = controls(of: user)
                landed = now.indices.first { now[$0] > before[$0] }
                return landed != nil
            }
            return landed!
        }

        /// `first` and `second` connected, with their control connections on different servers
        /// (HAProxy takes turns: `second` connecting again moves its control connection on).
        func placeApart(_ first: ClientProcess, _ firstName: String, _ second: ClientProcess, _ secondName: String)
            async throws -> (Int, Int)
        {
            let firstServer = try await controlServer(of: firstName, after: servers.map { _ in 0 })
            var secondServer = try await controlServer(of: secondName, after: servers.map { _ in 0 })
            for _ in 0..<servers.count where secondServer == firstServer {
                let before = controls(of: secondName)
                #expect(try await second.run("DISCONNECT \(secondName)") == "c> DISCONNECT OK")
                #expect(try await second.run("CONNECT \(secondName)") == "c> CONNECT OK")
                secondServer = try await controlServer(of: secondName, after: before)
            }
            try #require(
                secondServer != firstServer, "\(secondName)'s control connection stays on \(firstName)'s server")
            return (firstServer, secondServer)
        }

        func stop() async {
            await balancer.stop()
            for server in servers { await server.stop() }
            await time.stop()
            await postgres.remove()
            internet.remove()
            folder.remove()
        }
    }

    /// Two users behind ordinary NATs whose control connections are on different servers: the
    /// downloader's server makes the punch and passes `MEET` to the owner's; each `RENDEZVOUS`
    /// reaches whichever server HAProxy picks, with the port the user's NAT gave it in the PROXY
    /// header, and is paired on the downloader's server. Every download is punched and
    /// byte-identical, with no file bytes through the server host.
    @Test func usersOnDifferentServersPunchAConnection() async throws {
        let cluster = try await Cluster()
        defer { cluster.internet.remove() }
        try FileManager.default.createDirectory(atPath: cluster.folder.file("alice"), withIntermediateDirectories: true)
        let content = try NATTraversalTests.randomFile(4 << 20, at: cluster.folder.file("alice/movie.bin"))
        let alice = try await cluster.connectedUser("alice", then: ["PUBLISH movie.bin holidays"])
        let dave = try await cluster.connectedUser("dave")
        _ = try await cluster.placeApart(alice, "alice", dave, "dave")

        let tries = 4
        for attempt in 1...tries {
            let before = cluster.internet.bytes(through: cluster.serverHost)
            let line = try await dave.run("GET_FILE alice movie.bin copy\(attempt).bin", timeout: 60)
            let through = cluster.internet.bytes(through: cluster.serverHost) - before
            #expect(line == "c> GET_FILE OK", "try \(attempt): \(dave.process.stderrLines.suffix(3))")
            try expectSameBytes(
                Data(contentsOf: URL(fileURLWithPath: cluster.folder.file("dave/copy\(attempt).bin"))), content)
            #expect(through < 64 * 1024, "\(through) bytes went through the server's host")
        }
        #expect(dave.process.stderrLines.filter { $0.contains("punching a connection") }.count == tries)
        // The rendezvous went to the servers in turn: some were paired across servers.
        let rendezvous = cluster.servers.map { server in
            server.process.stdoutLines.filter { $0.hasPrefix("s> RENDEZVOUS FROM") }.count
        }
        #expect(rendezvous.filter { $0 > 0 }.count > 1, "every RENDEZVOUS reached one server: \(rendezvous)")
        for client in [alice, dave] { _ = try await client.finish() }
        await cluster.stop()
    }

    /// Two users behind symmetric NATs (no punch can work) whose control connections are on
    /// different servers: the downloader's server makes the relay and passes `RELAY_TO` on; the
    /// two `RELAY` connections reach whichever servers HAProxy picks, the first waits where it
    /// came and the second is carried there. Every download byte-identical, whichever servers
    /// the sides reached, at no more than the relay's rate.
    @Test func usersOnDifferentServersBehindSymmetricNATsAreRelayed() async throws {
        let limit = 4 << 20
        let cluster = try await Cluster(arguments: ["--relay-limit", String(limit)])
        defer { cluster.internet.remove() }
        try FileManager.default.createDirectory(atPath: cluster.folder.file("alice"), withIntermediateDirectories: true)
        let content = try NATTraversalTests.randomFile(4 << 20, at: cluster.folder.file("alice/movie.bin"))
        let alice = try await cluster.connectedUser("alice", symmetric: true, then: ["PUBLISH movie.bin holidays"])
        let dave = try await cluster.connectedUser("dave", symmetric: true)
        _ = try await cluster.placeApart(alice, "alice", dave, "dave")

        let tries = 3
        for attempt in 1...tries {
            let start = ContinuousClock.now
            let line = try await dave.run("GET_FILE alice movie.bin copy\(attempt).bin", timeout: 60)
            let took = ContinuousClock.now - start
            #expect(line == "c> GET_FILE OK", "try \(attempt): \(dave.process.stderrLines.suffix(3))")
            try expectSameBytes(
                Data(contentsOf: URL(fileURLWithPath: cluster.folder.file("dave/copy\(attempt).bin"))), content)
            let seconds = Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
            #expect(Double(content.count) / seconds < Double(limit) * 1.1, "relayed faster than the limit")
        }
        #expect(dave.process.stderrLines.contains { $0.contains("relaying through the directory server") })
        let relays = cluster.servers.map { server in
            server.process.stdoutLines.filter { $0.hasPrefix("s> RELAY FROM") }.count
        }
        #expect(relays.filter { $0 > 0 }.count > 1, "every RELAY was served by one server: \(relays)")
        let carried = cluster.servers.map { server in
            server.process.stderrLines.filter { $0.contains("side carried to the server at") }.count
        }
        // A second side that reached another server than the first was carried there (each
        // GET_FILE relays several connections: the chance that none was is well under 1 in 1000).
        #expect(carried.reduce(0, +) > 0, "no side was carried between servers: RELAY lines \(relays)")
        for client in [alice, dave] { _ = try await client.finish() }
        await cluster.stop()
    }

    /// A server killed while it relays a transfer between users on different servers: the
    /// download fails cleanly (no file where it was to go), and the next GET_FILE is relayed
    /// through the servers left.
    @Test func aServerKilledDuringARelayLeavesTheOthersRelaying() async throws {
        let cluster = try await Cluster(arguments: ["--relay-limit", String(4 << 20)])
        defer { cluster.internet.remove() }
        try FileManager.default.createDirectory(atPath: cluster.folder.file("alice"), withIntermediateDirectories: true)
        // More than the kernel's buffers on the way hold, at 4 MiB a second: about 12 s.
        _ = try NATTraversalTests.randomFile(48 << 20, at: cluster.folder.file("alice/movie.bin"))
        let clip = try NATTraversalTests.randomFile(1 << 20, at: cluster.folder.file("alice/clip.bin"))
        let alice = try await cluster.connectedUser(
            "alice", symmetric: true, then: ["PUBLISH movie.bin holidays", "PUBLISH clip.bin short"])
        let dave = try await cluster.connectedUser("dave", symmetric: true)
        _ = try await cluster.placeApart(alice, "alice", dave, "dave")

        func relaying(_ server: ServerProcess) -> Bool {
            let lines = server.process.stderrLines
            return lines.filter { $0.contains("transfer relayed (token") }.count
                > lines.filter { $0.contains("RELAY: a transfer ended") }.count
        }
        let before = dave.process.stdoutLines.count
        dave.send(["GET_FILE alice movie.bin copy.bin"])
        try await waitUntil("a chunk relayed to dave", timeout: 30) {
            ((try? String(contentsOfFile: cluster.folder.file("dave/.copy.bin.p2p-partial.info"), encoding: .utf8))
                ?? "").contains("\ndone 0")
        }
        let relay = try #require(cluster.servers.first(where: relaying), "no server is relaying")
        relay.process.signal(SIGKILL)
        try await waitUntil("GET_FILE's result", timeout: 60) {
            dave.process.stdoutLines.dropFirst(before).contains { $0.hasPrefix("c> GET_FILE") }
        }
        #expect(dave.process.stdoutLines.dropFirst(before).contains("c> GET_FILE FAIL"))
        #expect(!FileManager.default.fileExists(atPath: cluster.folder.file("dave/copy.bin")))

        // The clients open their control connections again on the servers left (if theirs was
        // the one killed), and HAProxy stops sending anything to it.
        var fetched = false
        let start = ContinuousClock.now
        while !fetched, ContinuousClock.now - start < .seconds(45) {
            fetched = try await dave.run("GET_FILE alice clip.bin clip.bin", timeout: 60) == "c> GET_FILE OK"
        }
        #expect(fetched, "dave: \(dave.process.stderrLines.suffix(4))")
        if fetched {
            try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: cluster.folder.file("dave/clip.bin"))), clip)
        }
        for client in [alice, dave] { _ = try await client.finish() }
        await cluster.stop()
    }
}
