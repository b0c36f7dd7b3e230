import P2PProtocol

/// What one server sharing the directory tells another about a hole punch the other made
/// (``DirectoryCoordination/forwardControl(_:toServer:)``). A punch is paired where it was made,
/// the server its token names (``ControlSessions/home(of:)``); a side whose `RENDEZVOUS` the
/// balancer sent to another server is passed there, and its answer comes back.
enum ClusterMessage: Sendable, Equatable {
    /// `user`'s side of the punch `token` came to the server `from`, from `ip`:`port`.
    case rendezvousArrived(token: String, user: String, ip: String, port: Int, from: String)
    /// How that side's rendezvous ended.
    case rendezvousAnswered(token: String, user: String, outcome: ControlSessions.RendezvousOutcome)

    /// The message as strings, for the store to carry.
    var fields: [String] {
        switch self {
        case .rendezvousArrived(let token, let user, let ip, let port, let from):
            ["RENDEZVOUS_ARRIVED", token, user, ip, String(port), from]
        case .rendezvousAnswered(let token, let user, .peer(let ip, let port)):
            ["RENDEZVOUS_ANSWERED", token, user, "0", ip, String(port)]
        case .rendezvousAnswered(let token, let user, .refused(let code)):
            ["RENDEZVOUS_ANSWERED", token, user, String(code.rawValue)]
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
        default:
            return nil
        }
    }
}
