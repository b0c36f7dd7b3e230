import NIOCore
import P2PDirectory
import P2PProtocol
import P2PTestSupport
import Testing

/// `--proxy-protocol`: behind HAProxy, each connection starts with a PROXY protocol header
/// naming the client.
@Suite struct ProxyProtocolTests {
    static let behindBalancer = DirectoryServerConfiguration(host: "127.0.0.1", port: 0, proxyProtocol: true)

    static func v1(_ client: String, port: Int = 40000) -> [UInt8] {
        Array("PROXY TCP4 \(client) 127.0.0.1 \(port) 4242\r\n".utf8)
    }

    static func v2(_ client: [UInt8], port: UInt16 = 40000, command: UInt8 = 0x21) -> [UInt8] {
        let block = client + [127, 0, 0, 1] + [UInt8(port >> 8), UInt8(port & 0xFF), 0x10, 0x92]
        return [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, command, 0x11, 0,
            UInt8(block.count),
        ]
            + block
    }

    static func bytes(_ command: Request.Command) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try RequestEncoder.encode(Request(dateTime: "26/11/2026 10:00:00", command: command), into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// Sends `prefix` and the request in one connection; the decoded reply, or nil when the
    /// server closed without one.
    static func send(_ prefix: [UInt8], _ command: Request.Command, to server: DirectoryHarness) async throws -> Reply?
    {
        let received = try await RawConnection.exchange(prefix + bytes(command), with: server.address)
        guard !received.isEmpty else { return nil }
        var buffer = ByteBuffer(bytes: received)
        var decoder = ReplyDecoder(operation: Request(dateTime: "", command: command).operation)
        return try decoder.decode(&buffer)
    }

    /// Checks the reply to `prefix` + the request (nil: closed without one).
    static func expect(
        _ prefix: [UInt8], _ command: Request.Command, _ expected: Reply?, from server: DirectoryHarness,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let reply = try await send(prefix, command, to: server)
        #expect(reply == expected, "after \(prefix.prefix(24))", sourceLocation: sourceLocation)
    }

    @Test func theHeadersClientIsTheOneRecordedAndChecked() async throws {
        try await DirectoryHarness.with(Self.behindBalancer) { server in
            try await Self.expect(Self.v1("203.0.113.9"), .register(user: "alice"), .status(0), from: server)
            try await Self.expect(
                Self.v1("203.0.113.9"), .connect(user: "alice", port: "5000"), .status(0), from: server)
            try await Self.expect(Self.v2([198, 51, 100, 4]), .register(user: "bob"), .status(0), from: server)
            try await Self.expect(
                Self.v2([198, 51, 100, 4]), .connect(user: "bob", port: "5001"), .status(0), from: server)
            try await Self.expect(
                Self.v1("203.0.113.9"), .listUsers(user: "alice"),
                .users([
                    ConnectedUser(name: "alice", ip: "203.0.113.9", port: "5000"),
                    ConnectedUser(name: "bob", ip: "198.51.100.4", port: "5001"),
                ]), from: server)
            // The owner check compares the header's client: another client may not take alice
            // offline, alice herself may.
            try await Self.expect(
                Self.v1("203.0.113.10"), .disconnect(user: "alice"),
                .status(DirectoryOperation.disconnect.otherErrorCode), from: server)
            try await Self.expect(Self.v1("203.0.113.9"), .disconnect(user: "alice"), .status(0), from: server)
        }
    }

    @Test func aConnectionWithoutAValidHeaderIsClosedAndChangesNothing() async throws {
        try await DirectoryHarness.with(Self.behindBalancer) { server in
            let bad: [[UInt8]] = [
                [],  // a plain request, as from a client bypassing the balancer
                Array("PROXY TCP4 203.0.113.9 127.0.0.1 40000\r\n".utf8),  // a field missing
                Array("PROXY TCP4 ".utf8) + [UInt8](repeating: 0x31, count: 200),  // too long
                Array("GARBAGE\r\n".utf8),
                Array(Self.v2([1, 2, 3, 4]).prefix(20)) + [0xFF],  // v2 with its block cut short... then junk
            ]
            for prefix in bad {
                try await Self.expect(prefix, .register(user: "mallory"), nil, from: server)
            }
            // A header cut short by the client closing its side: closed, nothing read.
            let truncated = try await RawConnection.exchange(
                Array("PROXY TCP4 203.0.11".utf8), with: server.address, halfClose: true)
            #expect(truncated.isEmpty)
            // Nothing changed, and the server goes on serving.
            try await Self.expect(Self.v1("203.0.113.9"), .register(user: "mallory"), .status(0), from: server)
        }
    }

    @Test func theBalancersHealthCheckIsServedAsItself() async throws {
        try await DirectoryHarness.with(Self.behindBalancer) { server in
            // Connect and close without a byte (a TCP check), then a v2 LOCAL header (the
            // balancer speaking for itself): its own address stands.
            #expect(try await RawConnection.exchange([], with: server.address, halfClose: true).isEmpty)
            try await Self.expect(
                Self.v2([0, 0, 0, 0], command: 0x20), .register(user: "hc"), .status(0), from: server)
            try await Self.expect(
                Self.v2([0, 0, 0, 0], command: 0x20), .connect(user: "hc", port: "7000"), .status(0), from: server)
            try await Self.expect(
                Self.v1("192.0.2.1"), .listUsers(user: "hc"),
                .users([ConnectedUser(name: "hc", ip: "127.0.0.1", port: "7000")]), from: server)
        }
    }

    @Test func withoutTheOptionAHeaderIsNotAccepted() async throws {
        try await DirectoryHarness.with { server in
            // Spoofing an address by talking PROXY to the server directly: refused, nothing changed.
            try await Self.expect(Self.v1("203.0.113.9"), .register(user: "eve"), nil, from: server)
            try await Self.expect(Self.v2([203, 0, 113, 9]), .register(user: "eve"), nil, from: server)
            #expect(try await server.send(.register(user: "eve")) == .status(0))
            #expect(try await server.send(.connect(user: "eve", port: "5000")) == .status(0))
            #expect(
                try await server.send(.listUsers(user: "eve"))
                    == .users([ConnectedUser(name: "eve", ip: "127.0.0.1", port: "5000")]))
        }
    }
}

/// Through a real HAProxy: the directory sees the client's address, not HAProxy's.
@Suite struct BehindHAProxyTests {
    @Test(arguments: ["send-proxy", "send-proxy-v2"])
    func clientsAddressesGoThroughTheBalancer(_ proxy: String) async throws {
        try await DirectoryHarness.with(ProxyProtocolTests.behindBalancer) { server in
            let balancer = try await HAProxyProcess(backends: [server.address.port!], proxy: proxy)
            defer { Task { await balancer.stop() } }
            let front = try SocketAddress(ipAddress: "127.0.0.1", port: balancer.port)
            let alice = try SocketAddress(ipAddress: "127.0.0.2", port: 0)
            let other = try SocketAddress(ipAddress: "127.0.0.3", port: 0)
            func send(_ command: Request.Command, from source: SocketAddress) async throws -> Reply {
                try await RawConnection.send(
                    Request(dateTime: "26/11/2026 10:00:00", command: command), to: front, from: source)
            }
            #expect(try await send(.register(user: "alice"), from: alice) == .status(0))
            #expect(try await send(.connect(user: "alice", port: "5000"), from: alice) == .status(0))
            #expect(
                try await send(.listUsers(user: "alice"), from: other)
                    == .users([ConnectedUser(name: "alice", ip: "127.0.0.2", port: "5000")]))
            // The owner check sees through the balancer too.
            #expect(
                try await send(.disconnect(user: "alice"), from: other)
                    == .status(DirectoryOperation.disconnect.otherErrorCode))
            #expect(try await send(.disconnect(user: "alice"), from: alice) == .status(0))
            await balancer.stop()
        }
    }
}
