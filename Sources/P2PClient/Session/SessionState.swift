import P2PProtocol

/// Whether a user is online through a client (``ClientSession``), and what serves her while
/// she is: everything that lives from a CONNECT to its DISCONNECT, in one value.
enum SessionState: Sendable {
    case offline
    case online(Online)

    /// A user online here: the server her peers download from, and on our servers her control
    /// connection and what the directory server offers through it.
    struct Online: Sendable {
        let user: String
        let peerServer: PeerFileServer
        /// Nil against a third-party server, or while it is being opened.
        var control: ControlConnection?
        var offers = ServerOffers()
    }

    /// What the directory server offers beyond the spec (docs/PROTOCOL.md, "Capabilities").
    struct ServerOffers: Sendable, Equatable {
        /// It times a hole punch between two users behind NATs ("punch").
        var punch = false
        /// It relays transfers no connection can be made for ("relay").
        var relay = false
        /// It binds users to keys ("identity"): every owner's key is then asked for before a
        /// download, and one bound to a key is reached over TLS only.
        var keys = false

        init() {}

        init(_ capabilities: [PublishedFile]) {
            punch = capabilities.contains(ServerCapabilities.punch)
            relay = capabilities.contains(ServerCapabilities.relay)
            keys = capabilities.contains(ServerCapabilities.identity)
        }
    }

    var online: Online? {
        if case .online(let online) = self { online } else { nil }
    }
}
