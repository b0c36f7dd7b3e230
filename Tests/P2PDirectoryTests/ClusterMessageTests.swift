import P2PProtocol
import Testing

@testable import P2PDirectory

/// What the servers sharing a directory pass each other about a hole punch: every message
/// reads back as itself, anything else is not taken for one, and a punch token names the
/// server that made it.
@Suite struct ClusterMessageTests {
    @Test(arguments: [
        ClusterMessage.rendezvousArrived(
            token: "0a1b2c3d" + String(repeating: "e", count: 32), user: "alice", ip: "198.18.3.2", port: 40001,
            from: "99aa00ff"),
        .rendezvousAnswered(token: "t", user: "dave", outcome: .peer(ip: "198.18.4.2", port: 51000)),
        .rendezvousAnswered(token: "t", user: "dave", outcome: .refused(2)),
        .relayArrived(token: "t", user: "dave", from: "99aa00ff", address: "127.0.0.1:4243"),
        .relayWait(token: "t", user: "dave", owner: "alice", downloader: "dave"),
        .relayGo(token: "t", user: "alice", address: "[::1]:4244"),
        .relayRefused(token: "t", user: "alice", code: 1),
        .relayLoad(server: "99aa00ff", active: 3),
    ])
    func readsBackAsItself(_ message: ClusterMessage) {
        #expect(ClusterMessage(fields: message.fields) == message)
    }

    @Test func otherFieldsAreNotAMessage() {
        for fields in [
            [], ["DIAL", "t", "h", "1"], ["RENDEZVOUS_ARRIVED", "t", "u", "ip", "port?", "s"],
            ["RENDEZVOUS_ANSWERED", "t", "u", "0", "ip"], ["RENDEZVOUS_ANSWERED", "t", "u", "12"],
            ["RENDEZVOUS_ANSWERED", "t", "u", "2", "extra"], ["RELAY_GO", "t", "u"], ["RELAY_REFUSED", "t", "u", "x"],
            ["RELAY_LOAD", "s", "-1"], ["RELAY_LOAD", "s"],
        ] {
            #expect(ClusterMessage(fields: fields) == nil, "\(fields)")
        }
    }

    /// Where the servers reach each other to carry a relay's side (`--cluster-address`).
    @Test func aLinkAddressIsAHostAndAPort() {
        #expect(DirectoryApplication.parseLinkAddress("10.0.0.7:4242")! == ("10.0.0.7", 4242))
        #expect(DirectoryApplication.parseLinkAddress("[fd00::7]:4243")! == ("fd00::7", 4243))
        #expect(DirectoryApplication.parseLinkAddress("dir-2.example:4242")! == ("dir-2.example", 4242))
        for text in ["10.0.0.7", "10.0.0.7:0", "10.0.0.7:70000", "fd00::7:4242", "[fd00::7:4242", ":4242", "a b:1"] {
            #expect(DirectoryApplication.parseLinkAddress(text) == nil, "\(text)")
        }
    }

    @Test func aPunchTokenNamesItsServer() {
        let token = "0a1b2c3d" + ControlMessage.makeToken()
        #expect(ControlSessions.home(of: token) == "0a1b2c3d")
        // A reversed connection's token (32 digits), or anything a client made up, names none.
        #expect(ControlSessions.home(of: ControlMessage.makeToken()) == nil)
        #expect(ControlSessions.home(of: "0a1b2c3d" + String(repeating: "z", count: 32)) == nil)
        #expect(ControlSessions.home(of: "0a1b2c3d" + String(repeating: "é", count: 32)) == nil)
    }
}
