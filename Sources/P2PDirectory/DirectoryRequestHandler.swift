import P2POperationLog
import P2PProtocol

/// What the store has to do for one request.
public enum StoreWork: Sendable, Hashable {
    case change(DirectoryChange)
    case query(DirectoryQuery)
    /// Answered without the store: what our server can do (``ServerCapabilities``).
    case answer(Reply, operation: DirectoryOperation)
}

/// Where a request goes: to the store, or to the server's extensions for our clients (keyed
/// sessions, control connections, punches, relays), which are no store work.
public enum RequestRoute: Sendable, Hashable {
    case store(StoreWork)
    case control(ControlRequest)
}

/// The requests the control layer serves (docs/PROTOCOL.md: "Keys", "users behind NAT").
public enum ControlRequest: Sendable, Hashable {
    /// `IDENTIFY`: opens a keyed session.
    case identify(user: String, publicKey: String, agreementKey: String, signature: String)
    /// `CONTROL`: the connection becomes the user's control connection.
    case control
    /// `RENDEZVOUS`: one side of a hole punch.
    case rendezvous(user: String, token: String)
    /// `RELAY`: one side of a relayed transfer.
    case relay(user: String, token: String)
}

/// Turns decoded requests into store work, recording each in the operation log and printing
/// the server's console line. Knows nothing of sockets or of the store behind it.
public struct DirectoryRequestHandler: Sendable {
    public let operationLog: (any OperationLogSink)?
    /// Receives the console line for each request (`s> REGISTER FROM alice`).
    public let console: @Sendable (String) -> Void
    /// Whether DISCONNECT, UNREGISTER, PUBLISH and DELETE of a connected user must come from
    /// the address it connected from.
    public let ownerCheck: Bool
    /// What the server announces beyond the spec (``ServerCapabilities``).
    public let capabilities: [PublishedFile]

    public init(
        operationLog: (any OperationLogSink)?, ownerCheck: Bool = true,
        capabilities: [PublishedFile] = ServerCapabilities.all, console: @escaping @Sendable (String) -> Void
    ) {
        self.operationLog = operationLog
        self.ownerCheck = ownerCheck
        self.capabilities = capabilities
        self.console = console
    }

    /// Records in the operation log that `request` was answered `code`; once per request,
    /// when its reply is ready.
    public func served(_ request: Request, code: P2PProtocol.ResultCode) {
        // Refused requests are logged too, with whatever they carried: escaped, so that no
        // name writes a line of its own in the log (and cut to the log's 256 bytes a field).
        operationLog?.submit(
            OperationRecord(
                user: ControlCharacters.escaped(request.user, maxBytes: 256),
                operation: request.operation.rawValue,
                fileName: ControlCharacters.escaped(request.fileName ?? "", maxBytes: 256),
                dateTime: ControlCharacters.escaped(request.dateTime, maxBytes: 256),
                result: Int32(code.rawValue)))
    }

    /// Accepts `request`, which arrived from `peerIP` (evaluated only for CONNECT, which stores
    /// it, and for the changes the owner check applies to), and says where it goes: the store
    /// work it is, or the control layer's request (``ControlSessions``). Prints the console
    /// line; `served` logs the operation once answered.
    ///
    /// `key`: the public key that proved the request (``KeyedSessions``); its change is then
    /// ``DirectoryChange/keyed(_:key:)``, which the store decides by the user's binding.
    public func accept(_ request: Request, peerIP: @autoclosure () -> String, key: String? = nil) -> RequestRoute {
        console("s> \(request.operation.rawValue) FROM \(ControlCharacters.escaped(request.user))")
        let route = route(of: request, peerIP: peerIP())
        if let key, case .store(.change(let change)) = route { return .store(.change(.keyed(change, key: key))) }
        return route
    }

    private func route(of request: Request, peerIP: @autoclosure () -> String) -> RequestRoute {
        switch request.command {
        case .register(let user):
            return .store(.change(.register(user: user)))
        case .unregister(let user):
            return .store(.change(.unregister(user: user, from: ownerCheck ? peerIP() : nil)))
        case .connect(let user, let port):
            return .store(.change(.connect(user: user, ip: peerIP(), port: port)))
        case .disconnect(let user):
            return .store(.change(.disconnect(user: user, from: ownerCheck ? peerIP() : nil)))
        case .publish(let user, let fileName, let description):
            let from = ownerCheck ? peerIP() : nil
            return .store(.change(.publish(user: user, fileName: fileName, description: description, from: from)))
        case .delete(let user, let fileName):
            return .store(.change(.delete(user: user, fileName: fileName, from: ownerCheck ? peerIP() : nil)))
        case .listUsers(let user):
            return .store(.query(.listUsers(requester: user)))
        case .listContent(_, let owner) where owner == ReservedFileName.capabilities:
            return .store(.answer(.content(capabilities), operation: .listContent))
        case .listContent(let user, let owner):
            return .store(.query(.listContent(requester: user, owner: owner)))
        case .search(let user, let query):
            return .store(.query(.search(requester: user, query: query)))
        case .identify(let user, let publicKey, let agreementKey, let signature):
            return .control(
                .identify(user: user, publicKey: publicKey, agreementKey: agreementKey, signature: signature))
        case .control:
            return .control(.control)
        case .rendezvous(let user, let token):
            return .control(.rendezvous(user: user, token: token))
        case .relay(let user, let token):
            return .control(.relay(user: user, token: token))
        }
    }
}
