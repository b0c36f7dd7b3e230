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

        init(servers count: Int = 3) async throws {
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
                        arguments: ["--no-oplog", "--proxy-protocol", "--store", database.connectionString],
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
        let aliceServer = try await cluster.controlServer(of: "alice", after: [0, 0, 0])
        var before = cluster.controls(of: "dave")
        let dave = try await cluster.connectedUser("dave")
        var daveServer = try await cluster.controlServer(of: "dave", after: before)
        // HAProxy takes turns: connecting again moves dave's control connection on.
        for _ in 0..<cluster.servers.count where daveServer == aliceServer {
            before = cluster.controls(of: "dave")
            #expect(try await dave.run("DISCONNECT dave") == "c> DISCONNECT OK")
            #expect(try await dave.run("CONNECT dave") == "c> CONNECT OK")
            daveServer = try await cluster.controlServer(of: "dave", after: before)
        }
        try #require(daveServer != aliceServer, "dave's control connection stays on alice's server")

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
}
