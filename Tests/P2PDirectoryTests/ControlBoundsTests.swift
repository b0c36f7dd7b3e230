import Logging
import NIOCore
import NIOPosix
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PDirectory

/// Issue 43: what one address or one user can make the control layer hold is bounded.
@Suite struct ControlBoundsTests {
    /// A real connection to a listener that discards what it gets: what a session writes to
    /// (from any thread, as the reachability check does).
    final class Channels: Sendable {
        let listener: any Channel
        private let made = Locked<[any Channel]>([])

        init() async throws {
            listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(host: "127.0.0.1", port: 0).get()
        }

        func make() async throws -> any Channel {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(to: listener.localAddress!).get()
            made.withLock { $0.append(channel) }
            return channel
        }

        func close() async {
            for channel in made.value { try? await channel.close() }
            try? await listener.close()
        }
    }

    /// Users u0..u(count-1), registered and connected from `ip` (to a port nobody listens on).
    static func sessions(_ count: Int, from ip: String, settings: ControlSettings) async throws -> (
        ControlSessions, ClosedPort
    ) {
        let store = InMemoryDirectoryStore()
        let closed = try ClosedPort()
        for index in 0..<count {
            #expect(await store.apply(.register(user: "u\(index)")) == .ok)
            #expect(await store.apply(.connect(user: "u\(index)", ip: ip, port: String(closed.port))) == .ok)
        }
        let sessions = ControlSessions(
            settings: settings, store: store, operationLog: nil, console: { _ in },
            logger: Logger(label: "control-test"))
        return (sessions, closed)
    }

    @Test func controlSessionsFromOneAddressAreCapped() async throws {
        let channels = try await Channels()
        defer { Task { await channels.close() } }
        let (sessions, closed) = try await Self.sessions(
            3, from: "127.0.0.9", settings: ControlSettings(maxSessionsPerAddress: 2))
        for index in 0..<2 {
            #expect(await sessions.admit(user: "u\(index)", from: "127.0.0.9").code == 0)
            _ = sessions.register(
                user: "u\(index)", ip: "127.0.0.9", port: String(closed.port), channel: try await channels.make())
        }
        #expect(await sessions.admit(user: "u2", from: "127.0.0.9").code == 3)
        // A user opening its control connection again replaces its own, which does not count.
        #expect(await sessions.admit(user: "u1", from: "127.0.0.9").code == 0)
    }

    @Test func pendingPunchesPerUserAreCapped() async throws {
        let channels = try await Channels()
        defer { Task { await channels.close() } }
        let settings = ControlSettings(maxPendingPunchesPerUser: 3)
        let (sessions, closed) = try await Self.sessions(3, from: "127.0.0.9", settings: settings)
        for index in 0..<3 {
            _ = sessions.register(
                user: "u\(index)", ip: "127.0.0.9", port: String(closed.port), channel: try await channels.make())
        }
        for _ in 0..<3 { #expect(await sessions.punch(requester: "u0", owner: "u1").code == 0) }
        // A loop of PUNCH u1 stops growing the table; another pair still punches.
        #expect(await sessions.punch(requester: "u0", owner: "u1").code == 2)
        #expect(await sessions.punch(requester: "u2", owner: "u1").code == 2)
        #expect(await sessions.punch(requester: "u2", owner: "u0").code == 2)
        let (fresh, freshPort) = try await Self.sessions(4, from: "127.0.0.9", settings: settings)
        for index in 0..<4 {
            _ = fresh.register(
                user: "u\(index)", ip: "127.0.0.9", port: String(freshPort.port), channel: try await channels.make())
        }
        for _ in 0..<3 { #expect(await fresh.punch(requester: "u0", owner: "u1").code == 0) }
        #expect(await fresh.punch(requester: "u2", owner: "u3").code == 0)
    }

    /// A loop of PUNCH on one control connection (each would make another client act): a burst
    /// of 16 is served, the rest of the loop is answered 2, and the connection stays open.
    @Test func requestsThatMakeOthersActAreRateLimitedPerSession() async throws {
        try await DirectoryHarness.with { harness in
            let closed = try ClosedPort()
            #expect(await harness.store.apply(.register(user: "u")) == .ok)
            #expect(await harness.store.apply(.connect(user: "u", ip: "127.0.0.1", port: String(closed.port))) == .ok)
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(to: harness.address) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            let codes = try await channel.executeThenClose { inbound, outbound -> [Int] in
                // CONTROL first, the messages once it is answered (as a client does: what follows
                // the request in the same read is not the control connection's).
                try await outbound.write(ByteBuffer(string: "CONTROL\u{0}07/12/2026 10:00:00\u{0}u\u{0}"))
                var codes: [String: Int] = [:]
                var buffer = ByteBuffer()
                var code = ResultCodeDecoder()
                var decoder = ControlMessageDecoder()
                var iterator = inbound.makeAsyncIterator()
                while codes.count < 24 {
                    guard var chunk = try await iterator.next() else { break }
                    if !code.isSettled {
                        buffer.writeBuffer(&chunk)
                        guard try code.decode(&buffer) == .ok, code.skipTerminator(&buffer) else { continue }
                        chunk = buffer
                        var punches = ByteBuffer()
                        for index in 0..<24 {
                            try ControlMessage.punchRequest(id: "p\(index)", owner: "ghost").encode(into: &punches)
                        }
                        try await outbound.write(punches)
                    }
                    decoder.append(&chunk)
                    while let message = try decoder.next() {
                        if case .punchReply(let id, let answer, _) = message { codes[id] = answer }
                    }
                }
                return (0..<24).map { codes["p\($0)"] ?? -1 }
            }
            // 1: the owner has no control connection (served); 2: over the rate.
            #expect(codes.prefix(16).allSatisfy { $0 == 1 }, "\(codes)")
            #expect(codes.filter { $0 == 2 }.count >= 6, "\(codes)")
        }
    }
}
