import Foundation
import NIOCore
import P2PProtocol
import P2PTestSupport
import Synchronization
import Testing

@testable import P2PDirectory

/// Issue 47: `--relay-limit` holds for the servers sharing a directory together, not for each:
/// each tells the others how many transfers it relays and takes its share of the limit.
@Suite struct ClusterRelayLimitTests {
    @Test func aServerAloneHasAllOfTheLimitElseItsShareByTransfers() {
        #expect(ClusterRelayLoad.share(of: 1000, mine: 0, others: 5) == 1000)
        #expect(ClusterRelayLoad.share(of: 1000, mine: 2, others: 0) == 1000)
        #expect(ClusterRelayLoad.share(of: 1000, mine: 1, others: 1) == 500)
        #expect(ClusterRelayLoad.share(of: 1000, mine: 1, others: 3) == 250)
        #expect(ClusterRelayLoad.share(of: 1000, mine: 3, others: 1) == 750)
    }

    @Test func aCountNotRenewedRunsOut() {
        var load = ClusterRelayLoad()
        let now = NIODeadline.now()
        load.record(2, of: "a", now: now)
        load.record(1, of: "b", now: now)
        #expect(load.others(now: now) == 3)
        load.record(0, of: "b", now: now)
        #expect(load.others(now: now) == 2)
        #expect(load.others(now: now + ClusterRelayLoad.lifetime + .milliseconds(1)) == 0)
    }

    @Test func theHubFollowsTheOthersCounts() {
        let hub = RelayHub(settings: RelaySettings(bytesPerSecond: 1 << 20), metrics: .none, logger: .init(label: "t"))
        hub.load(of: "other", active: 3)
        // None here: a relay starting here may have it all until it is counted.
        #expect(hub.totalRate == 1 << 20)
        hub.load(of: "other", active: 0)
        #expect(hub.totalRate == 1 << 20)
    }

    /// Two servers on one PostgreSQL, each pairing one relay, with `--relay-limit 1M`: the two
    /// transfers together move about 1 MiB/s, half each, not 1 MiB/s each.
    @Test func twoServersRelayingShareTheLimit() async throws {
        let limit = 1 << 20
        let (_, servers, folder) = try await SeveralServersTests.servers(
            2, extraArguments: ["--relay-limit", String(limit)])
        defer { folder.remove() }
        let closed = try ClosedPort()
        let date = "07/12/2026 10:00:00"
        var connections: [RelayBoundsTests.Raw] = []
        var writers: [Task<Void, Never>] = []
        var downloads: [RelayBoundsTests.Raw] = []
        for (index, server) in servers.enumerated() {
            let address = try SocketAddress(ipAddress: "127.0.0.1", port: server.port)
            let (owner, downloader) = ("owner\(index)", "downloader\(index)")
            for user in [owner, downloader] {
                #expect(try await SeveralServersTests.send(.register(user: user), to: server.port) == .status(0))
                #expect(
                    try await SeveralServersTests.send(.connect(user: user, port: String(closed.port)), to: server.port)
                        == .status(0))
            }
            let ownerControl = try await RelayBoundsTests.Raw(to: address, sending: ["CONTROL", date, owner])
            let control = try await RelayBoundsTests.Raw(to: address, sending: ["CONTROL", date, downloader])
            connections += [ownerControl, control]
            try await waitUntil("both control connections open") {
                [ownerControl, control].allSatisfy { $0.received.value.starts(with: Array("0\0".utf8)) }
            }
            try await control.send(ControlMessage.relayRequest(id: "r", owner: owner).fields)
            var token: String?
            try await waitUntil("RELAYING") {
                for case .relayReply("r", 0, let given) in control.messages { token = given }
                return token != nil
            }
            let ownerSide = try await RelayBoundsTests.Raw(to: address, sending: ["RELAY", date, owner, token!])
            let downloaderSide = try await RelayBoundsTests.Raw(
                to: address, sending: ["RELAY", date, downloader, token!])
            connections += [ownerSide, downloaderSide]
            downloads.append(downloaderSide)
            try await waitUntil("both sides joined") {
                [ownerSide, downloaderSide].allSatisfy { $0.received.value.starts(with: Array("0\0".utf8)) }
            }
            // The owner sends without end; the relay paces it.
            writers.append(
                Task {
                    let chunk = [String](repeating: String(repeating: "x", count: 16 << 10), count: 1)
                    while !Task.isCancelled { try? await ownerSide.send(chunk) }
                })
        }
        // The servers tell each other their counts at once; then three seconds counted.
        try await waitUntil("each server takes half the limit") {
            servers.allSatisfy { server in
                (server.process.stdoutLines + server.process.stderrLines).last { $0.contains("share of the limit") }?
                    .contains("is \(limit / 2) bytes/s") == true
            }
        }
        let before = downloads.map { $0.received.value.count }
        let start = ContinuousClock.now
        try await Task.sleep(for: .seconds(3))
        let seconds = (ContinuousClock.now - start) / .seconds(1)
        let rates = zip(downloads, before).map { Double($0.received.value.count - $1) / seconds }
        let total = rates.reduce(0, +)
        #expect(total < Double(limit) * 1.15, "relayed \(rates) bytes/s, more than the limit \(limit) together")
        #expect(total > Double(limit) * 0.7, "relayed \(rates) bytes/s, well under the limit \(limit)")
        for rate in rates {
            #expect(rate > Double(limit) * 0.3, "the transfers did not share the limit: \(rates)")
        }
        for writer in writers { writer.cancel() }
        for connection in connections { await connection.close() }
        for server in servers { await server.stop() }
    }
}
