import P2PTestSupport
import Testing

@testable import P2PDirectory

/// Issue 43: two accounts cannot hold every relay slot, and a slot nobody joins comes back.
@Suite struct RelayBoundsTests {
    static func hub(joinTimeout: Duration = .seconds(30)) -> RelayHub {
        RelayHub(
            settings: RelaySettings(
                bytesPerSecond: 1 << 20, maxTransfers: 8, maxTransfersPerUser: 2, joinTimeout: joinTimeout),
            metrics: .none, logger: .init(label: "relay-test"))
    }

    @Test func oneUserTakesPartInAtMostItsShareOfRelays() {
        let hub = Self.hub()
        #expect(hub.create(owner: "bob", downloader: "alice").code == 0)
        #expect(hub.create(owner: "bob", downloader: "alice").code == 0)
        // A third with alice, as downloader or as owner, is refused; others still get theirs.
        #expect(hub.create(owner: "bob", downloader: "alice").code == 2)
        #expect(hub.create(owner: "alice", downloader: "carol").code == 2)
        #expect(hub.create(owner: "dave", downloader: "carol").code == 0)
    }

    @Test func aRelayNobodyJoinsGivesItsSlotsBack() async throws {
        let hub = Self.hub(joinTimeout: .milliseconds(100))
        #expect(hub.create(owner: "bob", downloader: "alice").code == 0)
        #expect(hub.create(owner: "bob", downloader: "alice").code == 0)
        #expect(hub.create(owner: "bob", downloader: "alice").code == 2)
        try await waitUntil("alice's relays forgotten") { hub.create(owner: "erin", downloader: "alice").code == 0 }
    }
}
