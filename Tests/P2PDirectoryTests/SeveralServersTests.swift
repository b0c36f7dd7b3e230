import Foundation
import NIOCore
import P2PDirectory
import P2PDirectoryStores
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PDirectoryPostgres
@testable import P2PDirectorySQLite

/// Three `p2p-server` processes on one PostgreSQL database behave like one server.
@Suite struct SeveralServersTests {
    /// Starts `count` servers on a fresh database of the shared test PostgreSQL.
    static func servers(
        _ count: Int, on url: PostgresStoreURL? = nil, extraArguments: [String] = []
    ) async throws -> (url: PostgresStoreURL, servers: [ServerProcess], folder: TemporaryDirectory) {
        let folder = try TemporaryDirectory()
        var database = url
        if database == nil { database = try await PostgresServer.shared().newDatabase() }
        var servers: [ServerProcess] = []
        for index in 0..<count {
            servers.append(
                try await ServerProcess(
                    dataDirectory: folder.file("unused-\(index)"),
                    arguments: ["--no-oplog", "--peer-check-interval", "0", "--store", database!.connectionString]
                        + extraArguments))
        }
        return (database!, servers, folder)
    }

    static func send(_ command: Request.Command, to port: Int, from source: String? = nil) async throws -> Reply {
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: port)
        let sourceAddress = try source.map { try SocketAddress(ipAddress: $0, port: 0) }
        return try await RawConnection.send(
            Request(dateTime: "26/11/2026 10:00:00", command: command), to: address, from: sourceAddress)
    }

    /// Three servers checking peers every 0.5 s share the work: each connected user is checked
    /// by one of them per round (claimed in the database), so a peer sees about one check per
    /// round, not three.
    @Test func threeServersCheckEachPeerOncePerRound() async throws {
        let peer = try FragilePeer()
        defer { peer.stop() }
        let (_, servers, folder) = try await Self.servers(3, extraArguments: ["--peer-check-interval", "0.5"])
        defer { folder.remove() }
        let users = 10
        for index in 0..<users {
            #expect(try await Self.send(.register(user: "u\(index)"), to: servers[index % 3].port) == .status(0))
            #expect(
                try await Self.send(.connect(user: "u\(index)", port: String(peer.port)), to: servers[index % 3].port)
                    == .status(0))
        }
        let checks = { peer.seen.requests.filter { $0 == ReservedFileName.peerCheck }.count }
        try await waitUntil("the first checks") { checks() >= users }
        let start = ContinuousClock.now
        let counted = checks()
        // Sixty checks: six rounds when shared, two when every server checks everybody.
        try await waitUntil("60 more checks", timeout: 30) { checks() >= counted + 60 }
        let took = ContinuousClock.now - start
        #expect(took > .seconds(2), "60 checks of \(users) peers came in \(took): several servers check the same peers")
        for server in servers { await server.stop() }
    }

    /// A server that dies holding its claims: once they run out (two rounds and a check) the
    /// others check its users, and its dead peer expires, once, within the bound.
    @Test func aServerKilledMidRoundLeavesItsPeersToTheOthers() async throws {
        let interval = 0.5
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let url = try await PostgresServer.shared().newDatabase()
        func start(_ index: Int) async throws -> ServerProcess {
            try await ServerProcess(
                dataDirectory: folder.file("unused-\(index)"),
                arguments: [
                    "--no-oplog", "--peer-check-interval", String(interval), "--peer-check-failures", "3",
                    "--store", url.connectionString,
                ])
        }
        // The first server alone, so that it claims every user.
        let first = try await start(0)
        let peers = try (0..<4).map { _ in try FragilePeer() }
        defer { for peer in peers { peer.stop() } }
        let dead = try ClosedPort()
        for (index, peer) in peers.enumerated() {
            #expect(try await Self.send(.register(user: "live\(index)"), to: first.port) == .status(0))
            #expect(
                try await Self.send(.connect(user: "live\(index)", port: String(peer.port)), to: first.port)
                    == .status(0))
        }
        #expect(try await Self.send(.register(user: "gone"), to: first.port) == .status(0))
        #expect(try await Self.send(.connect(user: "gone", port: String(dead.port)), to: first.port) == .status(0))
        let checks = { peers.map { $0.seen.requests.filter { $0 == ReservedFileName.peerCheck }.count } }
        try await waitUntil("the first server's checks") { checks().allSatisfy { $0 >= 1 } }
        let others = [try await start(1), try await start(2)]

        first.process.signal(SIGKILL)
        _ = try await first.process.waitForExit()
        let killed = ContinuousClock.now
        let before = checks()
        // Its claims last 2 x 0.5 + 0.5 s; then a round of the others checks everybody.
        try await waitUntil("the others to check the first server's users", timeout: 10) {
            zip(checks(), before).allSatisfy { $0 >= $1 + 2 }
        }
        // gone: the claim runs out (1.5 s), then three failed checks in a row, 0.5 s apart.
        try await waitUntil("gone to expire", timeout: 15) {
            guard case .users(let users) = try await Self.send(.listUsers(user: "live0"), to: others[0].port) else {
                return false
            }
            return !users.contains { $0.name == "gone" }
        }
        let expiredAfter = ContinuousClock.now - killed
        print("a server killed mid-round: its dead peer expired \(expiredAfter) after the kill")
        #expect(expiredAfter < .seconds(6), "gone expired \(expiredAfter) after its checker died (bound about 3.5 s)")
        // The console line follows the change: wait for it rather than race it.
        let expiries = { others.flatMap { $0.process.stdoutLines }.filter { $0.hasPrefix("s> EXPIRE gone:") } }
        try await waitUntil("the EXPIRE line of gone") { !expiries().isEmpty }
        #expect(expiries().count == 1, "\(expiries())")
        // The live users stay.
        guard case .users(let users) = try await Self.send(.listUsers(user: "live0"), to: others[1].port) else {
            Issue.record("LIST_USERS failed")
            return
        }
        #expect(Set(users.map(\.name)) == ["live0", "live1", "live2", "live3"])
        for server in others { await server.stop() }
    }

    /// A server shut down (SIGTERM) gives back the users it claimed and leaves the checkers'
    /// table as it goes, well before its claims would run out (two rounds and a check: 6 s
    /// here), so the one left takes everybody at its next round.
    @Test func aServerShutDownGivesBackItsClaimsAtOnce() async throws {
        let peer = try FragilePeer()
        defer { peer.stop() }
        let (url, servers, folder) = try await Self.servers(2, extraArguments: ["--peer-check-interval", "2"])
        defer { folder.remove() }
        for index in 0..<6 {
            #expect(try await Self.send(.register(user: "u\(index)"), to: servers[0].port) == .status(0))
            #expect(
                try await Self.send(.connect(user: "u\(index)", port: String(peer.port)), to: servers[0].port)
                    == .status(0))
        }
        let postgres = try await PostgresServer.shared()
        func count(_ sql: String) async throws -> Int {
            Int(try await postgres.psql(sql, database: url.database).first ?? "") ?? -1
        }
        let liveCheckers = "SELECT count(*) FROM directory_checker WHERE alive_until > now()"
        let claimedByTheGone =
            """
            SELECT count(*) FROM directory_user WHERE check_until > now() AND check_by NOT IN (SELECT id FROM \
            directory_checker)
            """
        try await waitUntil("both servers to check, each its share", timeout: 20) {
            let checkers = try await count(liveCheckers)
            let claiming = try await count(
                "SELECT count(DISTINCT check_by) FROM directory_user WHERE check_until > now()")
            return checkers == 2 && claiming == 2
        }
        await servers[1].stop()
        #expect(try await count(liveCheckers) == 1)
        #expect(try await count(claimedByTheGone) == 0)
        try await waitUntil("the server left to claim everybody", timeout: 10) {
            try await count("SELECT count(*) FROM directory_user WHERE check_until > now()") == 6
        }
        await servers[0].stop()
    }

    @Test func aChangeAnsweredByOneIsSeenByTheNextRequestToAnother() async throws {
        let (_, servers, folder) = try await Self.servers(3)
        defer { folder.remove() }
        let ports = servers.map(\.port)
        #expect(try await Self.send(.register(user: "alice"), to: ports[0]) == .status(0))
        #expect(try await Self.send(.register(user: "alice"), to: ports[1]) == .status(1))
        #expect(try await Self.send(.connect(user: "alice", port: "5000"), to: ports[1]) == .status(0))
        #expect(try await Self.send(.register(user: "bob"), to: ports[2]) == .status(0))
        #expect(try await Self.send(.connect(user: "bob", port: "6000"), to: ports[0]) == .status(0))
        #expect(
            try await Self.send(.publish(user: "alice", fileName: "notes.txt", description: "week 1"), to: ports[2])
                == .status(0))
        #expect(
            try await Self.send(.listUsers(user: "bob"), to: ports[0])
                == .users([
                    ConnectedUser(name: "alice", ip: "127.0.0.1", port: "5000"),
                    ConnectedUser(name: "bob", ip: "127.0.0.1", port: "6000"),
                ]))
        #expect(
            try await Self.send(.listContent(user: "bob", owner: "alice"), to: ports[1])
                == .content([PublishedFile(name: "notes.txt", description: "week 1")]))
        #expect(
            try await Self.send(.search(user: "bob", query: "WEE"), to: ports[2])
                == .hits([SearchHit(owner: "alice", name: "notes.txt", description: "week 1")]))
        #expect(try await Self.send(.unregister(user: "alice"), to: ports[2]) == .status(0))
        #expect(try await Self.send(.listContent(user: "bob", owner: "alice"), to: ports[0]) == .status(3))
        #expect(try await Self.send(.register(user: "alice"), to: ports[1]) == .status(0))
        for server in servers { await server.stop() }
    }

    /// 200 requests about one name, sent at once and spread over the servers: decided exactly
    /// as one server decides them, one after the other.
    @Test func conflictingRequestsSpreadOverServersResolveAsOnOne() async throws {
        let (_, servers, folder) = try await Self.servers(3)
        defer { folder.remove() }
        let ports = servers.map(\.port)
        func all(_ command: Request.Command) async throws -> [Reply] {
            try await withThrowingTaskGroup(of: Reply.self) { group in
                for index in 0..<200 {
                    group.addTask { try await Self.send(command, to: ports[index % ports.count]) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        let registers = try await all(.register(user: "same"))
        #expect(registers.filter { $0 == .status(0) }.count == 1)
        #expect(registers.filter { $0 == .status(1) }.count == 199)

        let connects = try await all(.connect(user: "same", port: "7000"))
        #expect(connects.filter { $0 == .status(0) }.count == 1)
        #expect(connects.filter { $0 == .status(2) }.count == 199)

        let publishes = try await all(.publish(user: "same", fileName: "one.txt", description: "d"))
        #expect(publishes.filter { $0 == .status(0) }.count == 1)
        #expect(publishes.filter { $0 == .status(3) }.count == 199)
        #expect(
            try await Self.send(.listContent(user: "same", owner: "same"), to: ports[0])
                == .content([PublishedFile(name: "one.txt", description: "d")]))
        for server in servers { await server.stop() }
    }

    /// `kill -9` of a server in the middle of a stream of REGISTERs: everything it answered 0
    /// is in the database.
    @Test func everyRegisterAnsweredBeforeKillMinusNineIsKept() async throws {
        let (url, servers, folder) = try await Self.servers(1)
        defer { folder.remove() }
        let server = servers[0]
        let answered = Locked<[String]>([])
        let senders = 8
        try await withThrowingTaskGroup(of: Void.self) { group in
            for sender in 0..<senders {
                group.addTask {
                    for index in 0... {
                        let name = "user-\(sender)-\(index)"
                        guard let reply = try? await Self.send(.register(user: name), to: server.port) else { return }
                        if reply == .status(0) { answered.withLock { $0.append(name) } }
                    }
                }
            }
            try await waitUntil("200 REGISTERs answered", timeout: 60) { answered.withLock { $0.count } >= 200 }
            server.process.signal(SIGKILL)
            try await group.waitForAll()
        }
        _ = try await server.process.waitForExit()
        let stored = Set(
            try await PostgresServer.shared().psql("SELECT name FROM directory_user", database: url.database))
        let acknowledged = answered.withLock { $0 }
        #expect(acknowledged.count >= 200)
        #expect(acknowledged.filter { !stored.contains($0) } == [])
    }

    /// PostgreSQL stopped under running servers: requests get their error codes promptly, the
    /// servers stay up and say so once, and serve again when PostgreSQL is back.
    @Test func postgresStoppedAndStartedAgain() async throws {
        let postgres = try await PostgresServer.start()
        defer { Task { await postgres.remove() } }
        let url = try await postgres.newDatabase()
        let (_, servers, folder) = try await Self.servers(2, on: url)
        defer { folder.remove() }
        #expect(try await Self.send(.register(user: "alice"), to: servers[0].port) == .status(0))
        #expect(try await Self.send(.connect(user: "alice", port: "5000"), to: servers[1].port) == .status(0))

        await postgres.stop()
        for server in servers {
            for command: Request.Command in [
                .register(user: "bob"), .listUsers(user: "alice"),
                .publish(user: "alice", fileName: "f", description: ""),
                .register(user: "carol"),
            ] {
                let start = ContinuousClock.now
                let reply = try await Self.send(command, to: server.port)
                // Before the server's idle timeout (5 s): the client hears back.
                #expect(ContinuousClock.now - start < .seconds(4), "\(command)")
                let operation = Request(dateTime: "", command: command).operation
                #expect(reply == .status(operation.otherErrorCode), "\(command)")
            }
            #expect(server.process.isRunning)
            func outages() -> Int {
                server.process.stderrLines.filter { $0.contains("requests get their error codes") }.count
            }
            // Logged before the replies; read here through a pipe, maybe a moment after them.
            try await waitUntil("the server to log the outage") { outages() >= 1 }
            #expect(outages() == 1, "\(server.process.stderrLines.suffix(10))")
        }

        try await postgres.restart()
        for server in servers {
            try await waitUntil("the server to serve again", timeout: 60) {
                try await Self.send(.listUsers(user: "alice"), to: server.port)
                    == .users([ConnectedUser(name: "alice", ip: "127.0.0.1", port: "5000")])
            }
            // Logged before the reply is sent, but read from the server's stderr pipe by another
            // thread of this process: it may show up here a moment after the reply.
            try await waitUntil("the server to say PostgreSQL answers again") {
                server.process.stderrLines.contains { $0.contains("answers again") }
            }
        }
        #expect(try await Self.send(.register(user: "bob"), to: servers[0].port) == .status(0))
        #expect(try await Self.send(.register(user: "bob"), to: servers[1].port) == .status(1))
        for server in servers { await server.stop() }
    }

    /// Three servers behind a real HAProxy with the PROXY protocol: the directory records the
    /// client's address, and with one server killed the clients keep getting answers.
    @Test func behindHAProxyOneServerMayDie() async throws {
        let (_, servers, folder) = try await Self.servers(3, extraArguments: ["--proxy-protocol"])
        defer { folder.remove() }
        let balancer = try await HAProxyProcess(backends: servers.map(\.port))
        defer { Task { await balancer.stop() } }
        #expect(try await Self.send(.register(user: "alice"), to: balancer.port, from: "127.0.0.2") == .status(0))
        #expect(
            try await Self.send(.connect(user: "alice", port: "5000"), to: balancer.port, from: "127.0.0.2")
                == .status(0))
        for _ in 0..<3 {
            #expect(
                try await Self.send(.listUsers(user: "alice"), to: balancer.port, from: "127.0.0.3")
                    == .users([ConnectedUser(name: "alice", ip: "127.0.0.2", port: "5000")]))
        }
        servers[1].process.signal(SIGKILL)
        _ = try await servers[1].process.waitForExit()
        for index in 0..<30 {
            #expect(
                try await Self.send(.register(user: "user-\(index)"), to: balancer.port, from: "127.0.0.3")
                    == .status(0))
        }
        await balancer.stop()
        for server in servers { await server.stop() }
    }

    /// A database that cannot be used is reported at once, with PostgreSQL's reason, not after
    /// the open timeout; the password never appears.
    @Test func unusableDatabaseIsReportedAtOnceWithTheReason() async throws {
        let postgres = try await PostgresServer.shared()
        var missing = postgres.url(database: "no_such_directory")
        missing.password = "s3cret"
        let closed = try ClosedPort()
        let refused = PostgresStoreURL(
            host: "127.0.0.1", port: closed.port, user: "p2p", database: "d", tlsMode: .disable)
        for (url, reason) in [(missing, "does not exist"), (refused, "refused")] {
            let start = ContinuousClock.now
            do {
                _ = try await PostgresDirectoryStore.open(url, logger: .init(label: "test"))
                Issue.record("opened \(url)")
            } catch {
                #expect("\(error)".contains(reason), "\(error)")
                #expect(!"\(error)".contains("s3cret"))
            }
            #expect(ContinuousClock.now - start < .seconds(5))
        }
    }

    /// `p2p-server copy-directory`: a SQLite directory copied into PostgreSQL lists the same
    /// users, addresses and files; a target that holds users is left alone without --replace.
    @Test func copyDirectoryFromSQLite() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let sqlite = try SQLiteDirectoryStore(dataDirectory: folder.path)
        let changes: [DirectoryChange] = [
            .keyed(.register(user: "alice"), key: "alice's key"), .register(user: "bob"), .register(user: "zoë"),
            .keyed(.connect(user: "alice", ip: "10.0.0.1", port: "5000"), key: "alice's key"),
            .connect(user: "zoë", ip: "10.0.0.3", port: "7000"),
            .keyed(.publish(user: "alice", fileName: "b.txt", description: "second <b>"), key: "alice's key"),
            .keyed(.publish(user: "alice", fileName: "a.txt", description: "first"), key: "alice's key"),
            .publish(user: "zoë", fileName: "naïve.pdf", description: "Ünïcode"),
        ]
        #expect(await sqlite.apply(changes).allSatisfy { $0 == .ok })
        try await sqlite.close()
        let url = try await PostgresServer.shared().newDatabase()

        func copy(_ extra: [String] = []) async throws -> (status: Int32, output: [String], errors: [String]) {
            let run = try ChildProcess(
                builtProduct("p2p-server"),
                ["copy-directory", "--from", folder.path, "--to", url.connectionString] + extra)
            let status = try await run.waitForExit(timeout: 60)
            return (status, run.stdoutLines, run.stderrLines)
        }
        // Not while a server uses the folder: refused before the target is touched.
        let running = try await ServerProcess(dataDirectory: folder.path)
        let busy = try await copy()
        await running.stop()
        #expect(busy.status == 1)
        #expect(
            busy.errors.contains { $0.contains("is in use by process \(running.process.pid)") }, "\(busy.errors)")

        let first = try await copy()
        #expect(first.status == 0, "\(first.errors)")
        #expect(first.output.contains { $0.hasPrefix("copied 3 users (2 connected) and 3 files") })

        let copied = try await PostgresDirectoryStore.open(url, logger: .init(label: "test"))
        #expect(try await copied.registeredUsers() == ["alice", "bob", "zoë"])
        #expect(
            try await copied.connectedUsers() == [
                ConnectedUser(name: "alice", ip: "10.0.0.1", port: "5000"),
                ConnectedUser(name: "zoë", ip: "10.0.0.3", port: "7000"),
            ])
        #expect(
            try await copied.files(of: "alice") == [
                PublishedFile(name: "b.txt", description: "second <b>"),
                PublishedFile(name: "a.txt", description: "first"),
            ])
        #expect(try await copied.files(of: "bob") == [])
        #expect(
            try await copied.search("unico") == [SearchHit(owner: "zoë", name: "naïve.pdf", description: "Ünïcode")])
        // Keys come along: alice is changed only by hers.
        #expect(try await copied.boundKey(of: "alice") == "alice's key")
        #expect(try await copied.boundKey(of: "bob") == nil)
        #expect(await copied.apply(.delete(user: "alice", fileName: "a.txt")) == 4)
        // The copy is a working directory: the rules go on from there.
        #expect(await copied.apply(.register(user: "alice")) == 1)
        #expect(await copied.apply(.register(user: "dave")) == .ok)

        let refused = try await copy()
        #expect(refused.status == 1)
        #expect(refused.errors.contains { $0.contains("not empty") && $0.contains("--replace") })
        #expect(try await copied.registeredUsers() == ["alice", "bob", "dave", "zoë"])

        let replaced = try await copy(["--replace"])
        #expect(replaced.status == 0, "\(replaced.errors)")
        #expect(try await copied.registeredUsers() == ["alice", "bob", "zoë"])
        try await copied.close()
    }
}
