import CoreMetrics
import Foundation
import NIOCore
import NIOPosix
@testable import P2PDirectory
import P2PProtocol
import P2PTestSupport
import Testing

/// One client address cannot take every connection slot (`--max-connections-per-address`), and
/// a flood of refused connections writes a few log lines, not one per connection.
@Suite struct ConnectionFairnessTests {
    /// A connection that sends nothing and stays open until the server closes it.
    static func hold(_ address: SocketAddress, from sourceIP: String, sending bytes: [UInt8] = []) async throws
        -> any Channel
    {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(to: try SocketAddress(ipAddress: sourceIP, port: 0))
            .connect(to: address).get()
        if !bytes.isEmpty {
            try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
        }
        return channel
    }

    /// Waits until `condition` holds, for at most `seconds`.
    static func eventually(_ seconds: Double = 10, _ condition: () async -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if await condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return await condition()
    }

    static func register(_ user: String) -> [UInt8] {
        RawConnection.fields("REGISTER", "03/12/2026 10:00:00", user)
    }

    /// Runs `body` with a server using `configuration`; returns what the server logged,
    /// the last summaries included (written when it stops).
    static func withServer(
        _ configuration: DirectoryServerConfiguration, _ body: (DirectoryHarness) async throws -> Void
    ) async throws -> [String] {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let log = LogRecorder()
        let server = try await DirectoryHarness(
            dataDirectory: folder.path, configuration: configuration, logger: log.logger(level: .info))
        do {
            try await body(server)
        } catch {
            try? await server.shutdown()
            throw error
        }
        try await server.shutdown()
        return log.lines
    }

    @Test func oneAddressGetsItsShareAndTheOthersStillGetIn() async throws {
        var configuration = DirectoryServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.maxConnectionsPerAddress = 4
        configuration.idleTimeout = .seconds(60)
        configuration.problemReportInterval = .seconds(600)
        let lines = try await Self.withServer(configuration) { server in
            var held: [any Channel] = []
            for _ in 0..<10 {
                held.append(try await Self.hold(server.address, from: "127.0.0.1"))
            }
            // Six are closed at accept; four stay open.
            #expect(await Self.eventually { held.filter(\.isActive).count == 4 })
            #expect(held.filter(\.isActive).count == 4)
            // Another address is served at once; the full one is closed without a reply.
            #expect(try await RawConnection.exchange(Self.register("alice"), with: server.address,
                from: SocketAddress(ipAddress: "127.0.0.2", port: 0)) == Array("0\0".utf8))
            let refused = try? await RawConnection.exchange(Self.register("bob"), with: server.address,
                from: SocketAddress(ipAddress: "127.0.0.1", port: 0))
            #expect(refused == nil || refused == [])
            // A slot given back is a slot to use again.
            try await held.first(where: \.isActive)!.close()
            #expect(await Self.eventually {
                (try? await RawConnection.exchange(Self.register("bob"), with: server.address,
                    from: SocketAddress(ipAddress: "127.0.0.1", port: 0))) == Array("0\0".utf8)
            })
            for channel in held where channel.isActive { try await channel.close() }
        }
        // The first refusal logged with its details, the rest in one summary line.
        let details = lines.filter { $0.contains("closing connection from 127.0.0.1") }
        #expect(details.count == 1)
        #expect(details.first?.contains("--max-connections-per-address") == true)
        let summaries = lines.filter { $0.contains("their address had reached its connection limit") }
        #expect(summaries.count == 1)
        // Six at first, one REGISTER, and those tried while the slot given back was on its way.
        let counted = summaries.first.flatMap { line in
            line.range(of: "from 127.0.0.1 (").flatMap { Int(line[$0.upperBound...].prefix { $0.isNumber }) }
        }
        #expect((counted ?? 0) >= 7, "\(summaries)")
        #expect(summaries.first?.contains(" \(counted ?? 0) connections closed at accept") == true, "\(summaries)")
    }

    @Test func anIPv4ClientOfADualStackSocketIsListedAsIPv4() {
        #expect(SocketAddress.unmapped("::ffff:192.0.2.7") == "192.0.2.7")
        #expect(SocketAddress.unmapped("::FFFF:192.0.2.7") == "192.0.2.7")
        #expect(SocketAddress.unmapped("::ffff:1:2") == "::ffff:1:2", "an ordinary IPv6 address")
        #expect(SocketAddress.unmapped("::ffff:") == "::ffff:")
        #expect(SocketAddress.unmapped("::fffe:192.0.2.7") == "::fffe:192.0.2.7")
        #expect(SocketAddress.unmapped("2001:db8::1") == "2001:db8::1")
        #expect(SocketAddress.unmapped("192.0.2.7") == "192.0.2.7")
    }

    @Test func anIPv6ClientCountsWithItsWhole64() {
        #expect(ConnectionLimits.key(for: "192.0.2.7") == "192.0.2.7")
        #expect(ConnectionLimits.key(for: "2001:db8:0:7::1") == "2001:db8:0:7::/64")
        #expect(ConnectionLimits.key(for: "2001:0db8:0000:0007:ffff:1:2:3") == "2001:db8:0:7::/64")
        #expect(ConnectionLimits.key(for: "::1") == "0:0:0:0::/64")
        let limits = ConnectionLimits(total: 10, perAddress: 2, gauge: Gauge(label: "test"))
        #expect(limits.admit("2001:db8:0:7::1") && limits.admit("2001:db8:0:7::2"))
        #expect(!limits.admit("2001:db8:0:7::3"), "a third address of the same /64 is over the limit")
        #expect(limits.admit("2001:db8:0:8::1"), "another /64 is not")
        limits.release("2001:db8:0:7::1")
        #expect(limits.admit("2001:db8:0:7::3"))
    }

    @Test func behindTheBalancerTheHeadersAddressIsCounted() async throws {
        var configuration = DirectoryServerConfiguration(host: "127.0.0.1", port: 0, proxyProtocol: true)
        configuration.maxConnectionsPerAddress = 2
        configuration.idleTimeout = .seconds(60)
        _ = try await Self.withServer(configuration) { server in
            let header = Array("PROXY TCP4 203.0.113.7 127.0.0.1 40000 4242\r\n".utf8)
            var held: [any Channel] = []
            for _ in 0..<3 {
                held.append(try await Self.hold(server.address, from: "127.0.0.1", sending: header))
            }
            #expect(await Self.eventually { held.filter(\.isActive).count == 2 })
            // Every connection comes from the balancer (127.0.0.1): another client behind it is served.
            let other = Array("PROXY TCP4 203.0.113.8 127.0.0.1 40001 4242\r\n".utf8)
            #expect(try await RawConnection.exchange(other + Self.register("carol"), with: server.address)
                == Array("0\0".utf8))
            let refused = try? await RawConnection.exchange(header + Self.register("dave"), with: server.address)
            #expect(refused == nil || refused == [])
            #expect(held.filter(\.isActive).count == 2)
            for channel in held where channel.isActive { try await channel.close() }
            // Its slots back: served again.
            #expect(await Self.eventually {
                (try? await RawConnection.exchange(header + Self.register("dave"), with: server.address))
                    == Array("0\0".utf8)
            })
        }
    }

    @Test func aFloodAtTheConnectionLimitWritesTwoLines() async throws {
        var configuration = DirectoryServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.maxConnections = 4
        configuration.maxConnectionsPerAddress = 0
        configuration.idleTimeout = .seconds(60)
        // Closed at once, not held for a second each.
        configuration.refusalDelay = .zero
        configuration.problemReportInterval = .seconds(600)
        var refusedProbes = 0
        var refusedHeld = 0
        let lines = try await Self.withServer(configuration) { server in
            var held: [any Channel] = []
            for _ in 0..<4 {
                held.append(try await Self.hold(server.address, from: "127.0.0.1"))
            }
            // The four are open once a fifth is refused. Connections are admitted on the event
            // loop each is given, so a probe can be admitted before a held connection still on
            // its way, which is then refused in its place: such a one is opened again.
            #expect(await Self.eventually {
                for index in held.indices where !held[index].isActive {
                    if let again = try? await Self.hold(server.address, from: "127.0.0.1") {
                        held[index] = again
                        refusedHeld += 1
                    }
                }
                let reply = try? await RawConnection.exchange(Self.register("x"), with: server.address)
                let refused = reply == nil || reply == []
                if refused { refusedProbes += 1 }
                return refused && held.allSatisfy { $0.isActive }
            })
            for _ in 0..<49 {
                _ = try? await RawConnection.exchange(Self.register("x"), with: server.address)
            }
            #expect(held.allSatisfy { $0.isActive })
            for channel in held { try await channel.close() }
        }
        let details = lines.filter { $0.contains("(--max-connections)") }
        #expect(details.count == 1)
        let summaries = lines.filter { $0.contains("the connection limit was reached") }
        #expect(summaries.count == 1)
        // Every refusal counted: the 49, the probes refused, and any held one refused in a probe's place.
        let refusals = 49 + refusedProbes + refusedHeld
        #expect(summaries.first?.contains(" \(refusals) connections closed at accept") == true, "\(summaries)")
    }
}
