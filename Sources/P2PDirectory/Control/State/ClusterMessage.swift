import P2PProtocol

/// What one server sharing the directory tells another about a hole punch or a relay the other
/// made (``DirectoryCoordination/forwardControl(_:toServer:)``). Each is paired by the server
/// that made it, the one its token names (``ControlSessions/home(of:)``). A punch's side whose
/// `RENDEZVOUS` the balancer sent to another server is passed there, and its answer comes back.
/// A relay's side that reached another server is told where to go: to wait there, the first
/// to come (that server then pairs the relay), or to the server where the other side waits,
/// which its server then carries it to (one hop between servers, at most).
enum ClusterMessage: Sendable, Equatable {
    /// `user`'s side of the punch `token` came to the server `from`, from `ip`:`port`.
    case rendezvousArrived(token: String, user: String, ip: String, port: Int, from: String)
    /// How that side's rendezvous ended.
    case rendezvousAnswered(token: String, user: String, outcome: ControlSessions.RendezvousOutcome)
    /// `user`'s side of the relay `token` came to the server `from`, which the others reach at
    /// `address` (host:port).
    case relayArrived(token: String, user: String, from: String, address: String)
    /// That side waits where it is, the first of the two: the relay between `owner` and
    /// `downloader` is paired there.
    case relayWait(token: String, user: String, owner: String, downloader: String)
    /// The other side waits at `address`: carry this one there.
    case relayGo(token: String, user: String, address: String)
    /// No such relay, or not this user's (or this side came already).
    case relayRefused(token: String, user: String, code: ResultCode)
    /// The server `server` relays `active` transfers now (to every server, ``everyServer``):
    /// each takes its share of the relay limit by its count among all (``ClusterRelayLoad``).
    case relayLoad(server: String, active: Int)

    /// The addressee of a message for every server sharing the directory.
    static let everyServer = "*"

    /// The message as strings, for the store to carry.
    var fields: [String] {
        switch self {
        case .rendezvousArrived(let token, let user, let ip, let port, let from):
            ["RENDEZVOUS_ARRIVED", token, user, ip, String(port), from]
        case .rendezvousAnswered(let token, let user, .peer(let ip, let port)):
            ["RENDEZVOUS_ANSWERED", token, user, "0", ip, String(port)]
        case .rendezvousAnswered(let token, let user, .refused(let code)):
            ["RENDEZVOUS_ANSWERED", token, user, String(code.rawValue)]
        case .relayArrived(let token, let user, let from, let address):
            ["RELAY_ARRIVED", token, user, from, address]
        case .relayWait(let token, let user, let owner, let downloader):
            ["RELAY_WAIT", token, user, owner, downloader]
        case .relayGo(let token, let user, let address):
            ["RELAY_GO", token, user, address]
        case .relayRefused(let token, let user, let code):
            ["RELAY_REFUSED", token, user, String(code.rawValue)]
        case .relayLoad(let server, let active):
            ["RELAY_LOAD", server, String(active)]
        }
    }

    /// Reads `fields` back; nil for anything else (another version's message, say).
    init?(fields: [String]) {
        switch fields.first {
        case "RENDEZVOUS_ARRIVED":
            guard fields.count == 6, let port = Int(fields[4]) else { return nil }
            self = .rendezvousArrived(token: fields[1], user: fields[2], ip: fields[3], port: port, from: fields[5])
        case "RENDEZVOUS_ANSWERED":
            guard fields.count >= 4, let code = UInt8(fields[3]).flatMap(ResultCode.init(rawValue:)) else { return nil }
            if code == .ok {
                guard fields.count == 6, let port = Int(fields[5]) else { return nil }
                self = .rendezvousAnswered(token: fields[1], user: fields[2], outcome: .peer(ip: fields[4], port: port))
            } else {
                guard fields.count == 4 else { return nil }
                self = .rendezvousAnswered(token: fields[1], user: fields[2], outcome: .refused(code))
            }
        case "RELAY_ARRIVED" where fields.count == 5:
            self = .relayArrived(token: fields[1], user: fields[2], from: fields[3], address: fields[4])
        case "RELAY_WAIT" where fields.count == 5:
            self = .relayWait(token: fields[1], user: fields[2], owner: fields[3], downloader: fields[4])
        case "RELAY_GO" where fields.count == 4:
            self = .relayGo(token: fields[1], user: fields[2], address: fields[3])
        case "RELAY_REFUSED" where fields.count == 4:
            guard let code = UInt8(fields[3]).flatMap(ResultCode.init(rawValue:)) else { return nil }
            self = .relayRefused(token: fields[1], user: fields[2], code: code)
        case "RELAY_LOAD" where fields.count == 3:
            guard let active = Int(fields[2]), active >= 0 else { return nil }
            self = .relayLoad(server: fields[1], active: active)
        default:
            return nil
        }
    }
}
