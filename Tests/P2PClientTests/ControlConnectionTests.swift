import Foundation
import NIOCore
import NIOPosix
import P2PProtocol
import P2PTestSupport
import Testing

/// The control connection (docs/PROTOCOL.md, "Extension: control connection") on loopback, with
/// real processes. An owner "behind a NAT" is a client whose file server listens on 127.0.0.5
/// while it reaches the directory from 127.0.0.1: the address the server records and checks is
/// closed, as a home router's is. (`NATTraversalTests` does the same with real NATs.)
@Suite(.serialized) struct ControlConnectionTests {
    struct System {
        let folder: TemporaryDirectory
        let time: TimeProcess
        let server: ServerProcess

        init(serverArguments: [String]) async throws {
            folder = try TemporaryDirectory()
            time = try await TimeProcess()
            server = try await ServerProcess(dataDirectory: folder.file("storage"), arguments: serverArguments)
        }

        func client(_ name: String, behindNAT: Bool = false, arguments: [String] = []) throws -> ClientProcess {
            let directory = folder.file(name)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            return try ClientProcess(
                serverPort: server.port, timeURL: time.url, directory: directory,
                extraArguments: (behindNAT ? ["--peer-host", "127.0.0.5"] : []) + arguments)
        }

        func stop() async {
            await server.stop()
            await time.stop()
            folder.remove()
        }
    }

    /// Runs `body` with `count` servers on `arguments` and a time service, stopping them all
    /// afterwards, also when `body` throws.
    static func withServers(
        _ count: Int, arguments: [String], in folder: TemporaryDirectory,
        _ body: ([ServerProcess], TimeProcess) async throws -> Void
    ) async throws {
        let time = try await TimeProcess()
        var servers: [ServerProcess] = []
        func stopAll() async {
            for server in servers { await server.stop() }
            await time.stop()
        }
        do {
            for index in 0..<count {
                servers.append(
                    try await ServerProcess(dataDirectory: folder.file("server-\(index)"), arguments: arguments))
            }
            try await body(servers, time)
        } catch {
            await stopAll()
            throw error
        }
        await stopAll()
    }

    /// LIST_USERS typed at `watcher` lists `user` again and again for `window`; then, once
    /// `client` is killed with SIGKILL, it stops listing it within 5 s.
    static func staysListedThenLeavesWhenKilled(
        _ client: ClientProcess, _ user: String, for window: Duration, askingWith watcher: ClientProcess
    ) async throws {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < window {
            #expect(try await lists(watcher, user), "\(user) dropped out of LIST_USERS")
        }
        client.process.signal(SIGKILL)
        _ = try await client.process.waitForExit()
        let killed = ContinuousClock.now
        try await waitUntil("\(user) gone from LIST_USERS", timeout: 5) { try await !lists(watcher, user) }
        #expect(ContinuousClock.now - killed < .seconds(5))
    }

    /// Whether LIST_USERS, typed at `client`, lists `user`.
    static func lists(_ client: ClientProcess, _ user: String) async throws -> Bool {
        let before = client.process.stdoutLines.count
        #expect(try await client.run("LIST_USERS") == "c> LIST_USERS OK")
        // The entries follow the result line; the next prompt-less lines until the count is reached.
        try await waitUntil("LIST_USERS entries") {
            client.process.stdoutLines.dropFirst(before).contains { $0.hasPrefix("watcher ") }
        }
        return client.process.stdoutLines.dropFirst(before).contains { $0.hasPrefix("\(user) ") }
    }

    @Test func anUnreachableOwnerStaysListedWhileItRunsAndGoesWhenKilled() async throws {
        // Users that fail 2 checks 0.3 s apart expire: within a second for a client without
        // the control connection.
        let system = try await System(serverArguments: [
            "--no-oplog", "--peer-check-interval", "0.3", "--peer-check-failures", "2", "--control-keepalive", "0.5",
        ])
        let alice = try system.client("alice", behindNAT: true)
        #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
        #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
        let carol = try system.client("carol", behindNAT: true, arguments: ["--no-control-connection"])
        #expect(try await carol.run("REGISTER carol") == "c> REGISTER OK")
        #expect(try await carol.run("CONNECT carol") == "c> CONNECT OK")
        let watcher = try system.client("watcher")
        #expect(try await watcher.run("REGISTER watcher") == "c> REGISTER OK")
        #expect(try await watcher.run("CONNECT watcher") == "c> CONNECT OK")

        // The server found alice's port closed, and says so.
        try await waitUntil("the reachability check") {
            system.server.process.stderrLines.contains {
                $0.contains("alice at 127.0.0.1:") && $0.contains("not reachable")
            }
        }
        // Carol, equally unreachable but without a control connection, goes after 2 checks;
        // alice stays through 10 times interval x failures (6 s).
        try await waitUntil("carol expired") {
            system.server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE carol") }
        }
        // Killed: its control connection ends with it, and so does its listing.
        try await Self.staysListedThenLeavesWhenKilled(alice, "alice", for: .seconds(6), askingWith: watcher)
        #expect(!system.server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE alice: its peer") })
        #expect(system.server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE alice: its control connection") })

        // A user that said DISCONNECT is not "expired" when its client then closes the connection.
        #expect(try await watcher.run("DISCONNECT watcher") == "c> DISCONNECT OK")
        #expect(try await watcher.run("CONNECT watcher") == "c> CONNECT OK")
        _ = try await watcher.finish()
        #expect(!system.server.process.stdoutLines.contains { $0.hasPrefix("s> EXPIRE watcher") })
        _ = try await carol.finish()
        await system.stop()
    }

    /// Two servers on one PostgreSQL, each checking peers: the server that does not hold an
    /// unreachable user's control connection leaves it alone too (the holder's lease is in the
    /// database), while a user without one is expired as before.
    @Test func serversSharingADirectoryLeaveAnotherServersControlledUserAlone() async throws {
        let database = try await PostgresServer.shared().newDatabase()
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let arguments = [
            "--no-oplog", "--peer-check-interval", "0.3", "--peer-check-failures", "2", "--store",
            database.connectionString,
        ]
        try await Self.withServers(2, arguments: arguments, in: folder) { servers, time in
            let (holder, other) = (servers[0], servers[1])
            func client(_ name: String, server: ServerProcess, _ extra: [String]) throws -> ClientProcess {
                try FileManager.default.createDirectory(atPath: folder.file(name), withIntermediateDirectories: true)
                return try ClientProcess(
                    serverPort: server.port, timeURL: time.url, directory: folder.file(name), extraArguments: extra)
            }
            let alice = try client("alice", server: holder, ["--peer-host", "127.0.0.5"])
            #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
            #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
            let carol = try client("carol", server: holder, ["--peer-host", "127.0.0.5", "--no-control-connection"])
            #expect(try await carol.run("REGISTER carol") == "c> REGISTER OK")
            #expect(try await carol.run("CONNECT carol") == "c> CONNECT OK")
            let watcher = try client("watcher", server: other, [])
            #expect(try await watcher.run("REGISTER watcher") == "c> REGISTER OK")
            #expect(try await watcher.run("CONNECT watcher") == "c> CONNECT OK")
            try await waitUntil("carol expired") {
                (holder.process.stdoutLines + other.process.stdoutLines).contains { $0.hasPrefix("s> EXPIRE carol") }
            }
            let start = ContinuousClock.now
            while ContinuousClock.now - start < .seconds(6) {
                #expect(try await Self.lists(watcher, "alice"), "alice dropped out of LIST_USERS")
            }
            #expect(
                !(holder.process.stdoutLines + other.process.stdoutLines).contains { $0.hasPrefix("s> EXPIRE alice") })
            for client in [alice, carol, watcher] { _ = try await client.finish() }
        }
    }

    /// Two servers on one PostgreSQL: a downloader on one gets the file of an unreachable owner
    /// whose control connection is on the other (the request to connect back goes through the
    /// database).
    @Test func aReversedConnectionReachesAnOwnerOnAnotherServer() async throws {
        let database = try await PostgresServer.shared().newDatabase()
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        for name in ["alice", "bob"] {
            try FileManager.default.createDirectory(atPath: folder.file(name), withIntermediateDirectories: true)
        }
        let content = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try content.write(to: URL(fileURLWithPath: folder.file("alice/notes.bin")))
        try await Self.withServers(2, arguments: ["--no-oplog", "--store", database.connectionString], in: folder) {
            servers, time in
            let alice = try ClientProcess(
                serverPort: servers[0].port, timeURL: time.url, directory: folder.file("alice"),
                extraArguments: ["--peer-host", "127.0.0.5"])
            for command in ["REGISTER alice", "CONNECT alice", "PUBLISH notes.bin notes"] {
                #expect(try await alice.run(command).hasSuffix(" OK"), "\(command)")
            }
            let bob = try ClientProcess(serverPort: servers[1].port, timeURL: time.url, directory: folder.file("bob"))
            #expect(try await bob.run("REGISTER bob") == "c> REGISTER OK")
            #expect(try await bob.run("CONNECT bob") == "c> CONNECT OK")
            #expect(try await bob.run("GET_FILE alice notes.bin copy.bin", timeout: 60) == "c> GET_FILE OK")
            try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: folder.file("bob/copy.bin"))), content)
            #expect(
                bob.process.stderrLines.contains { $0.contains("reversed connection") }, "\(bob.process.stderrLines)")
            for client in [alice, bob] { _ = try await client.finish() }
        }
    }

    @Test func aReachableDownloaderGetsTheFileOfAnUnreachableOwnerReversed() async throws {
        let system = try await System(serverArguments: ["--no-oplog"])
        let alice = try system.client("alice", behindNAT: true)
        var content = Data(count: 6 << 20)
        content.withUnsafeMutableBytes { bytes in
            for index in stride(from: 0, to: bytes.count, by: 8) {
                bytes.storeBytes(of: UInt64.random(in: 0...UInt64.max), toByteOffset: index, as: UInt64.self)
            }
        }
        try content.write(to: URL(fileURLWithPath: system.folder.file("alice/big.bin")))
        #expect(try await alice.run("REGISTER alice") == "c> REGISTER OK")
        #expect(try await alice.run("CONNECT alice") == "c> CONNECT OK")
        #expect(try await alice.run("PUBLISH big.bin random bytes") == "c> PUBLISH OK")
        let bob = try system.client("bob")
        #expect(try await bob.run("REGISTER bob") == "c> REGISTER OK")
        #expect(try await bob.run("CONNECT bob") == "c> CONNECT OK")
        #expect(try await bob.run("GET_FILE alice big.bin copy.bin", timeout: 60) == "c> GET_FILE OK")
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: system.folder.file("bob/copy.bin"))), content)
        #expect(
            bob.process.stderrLines.filter { $0.contains("reversed connection") }.count == 1,
            "\(bob.process.stderrLines)")

        // A token nobody asked for is not a way in: a connection presenting one gets nothing and
        // is closed.
        let bobPort = try #require(try await Self.port(of: "bob", askingWith: alice))
        let answer = try await RawConnection.exchange(
            RawConnection.fields("GET_FILE", "/.p2p-reserved/v1/reversed/0123456789abcdef0123456789abcdef"),
            with: try SocketAddress(ipAddress: "127.0.0.1", port: bobPort))
        #expect(answer.isEmpty)
        for client in [alice, bob] { _ = try await client.finish() }
        await system.stop()
    }

    /// The port `user` listens on, from LIST_USERS typed at `client`.
    static func port(of user: String, askingWith client: ClientProcess) async throws -> Int? {
        let before = client.process.stdoutLines.count
        _ = try await client.run("LIST_USERS")
        try await waitUntil("the entry of \(user)") {
            client.process.stdoutLines.dropFirst(before).contains { $0.hasPrefix("\(user) ") }
        }
        let line = client.process.stdoutLines.dropFirst(before).first { $0.hasPrefix("\(user) ") }
        return line?.split(separator: " ").last.flatMap { Int($0) }
    }
}

/// A directory server as the third-party C servers are: the eight operations, each connection
/// closed after its reply, an unknown operation closed without one. It records every operation
/// it is sent.
final class SpecOnlyServer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let received: Locked<[String]>
    private var decoder = RequestDecoder()

    init(received: Locked<[String]>) { self.received = received }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        do {
            guard let request = try decoder.decode(&bytes) else { return }
            // (Our decoder reads a keyed request's proof: a third-party server knows no KEYED.)
            guard request.proof == nil else {
                received.withLock { $0.append(KeyedRequest.prefix) }
                context.close(promise: nil)
                return
            }
            received.withLock { $0.append(request.operation.rawValue) }
            let code: UInt8
            switch request.command {
            case .register, .connect, .disconnect, .publish, .delete, .unregister: code = 0
            case .listContent: code = 3  // no such owner: nobody is ever listed here
            case .listUsers: code = 3
            case .search, .control, .rendezvous, .relay, .identify:
                context.close(promise: nil)
                return
            }
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: [UInt8(ascii: "0") + code, 0]))).whenComplete { _ in
                channel.close(promise: nil)
            }
        } catch {
            if let operation = decoder.operation { received.withLock { $0.append(operation.rawValue) } }
            context.close(promise: nil)
        }
    }
}

@Suite struct ThirdPartyServerTests {
    @Test func ourClientSendsAThirdPartyServerNothingButTheSpecsRequests() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let time = try await TimeProcess()
        let received = Locked<[String]>([])
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SpecOnlyServer(received: received))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try ClientProcess(
            serverPort: server.localAddress!.port!, timeURL: time.url, directory: folder.path)
        #expect(try await client.run("REGISTER alice") == "c> REGISTER OK")
        #expect(try await client.run("CONNECT alice") == "c> CONNECT OK")
        #expect(try await client.run("DISCONNECT alice") == "c> DISCONNECT OK")
        _ = try await client.finish()
        let operations = received.withLock { $0 }
        #expect(!operations.contains("CONTROL"), "\(operations)")
        #expect(Set(operations).isSubset(of: ["REGISTER", "CONNECT", "DISCONNECT", "LIST_CONTENT"]), "\(operations)")
        // Nothing alarming on stderr: the server simply has no control connection to offer.
        #expect(
            !client.process.stderrLines.contains { $0.contains("control connection") }, "\(client.process.stderrLines)")
        try await server.close()
        await time.stop()
    }
}
