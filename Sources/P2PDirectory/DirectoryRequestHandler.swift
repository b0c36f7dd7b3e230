import P2POperationLog
import P2PProtocol

/// Serves decoded requests: runs each against the store, records it in the operation log and
/// prints the server's console line. Knows nothing of sockets.
public struct DirectoryRequestHandler: Sendable {
    public let store: DirectoryStore
    public let operationLog: (any OperationLogSink)?
    /// Receives the console line for each request (`s> REGISTER FROM alice`).
    public let console: @Sendable (String) -> Void

    public init(
        store: DirectoryStore,
        operationLog: (any OperationLogSink)?,
        console: @escaping @Sendable (String) -> Void
    ) {
        self.store = store
        self.operationLog = operationLog
        self.console = console
    }

    /// The reply to `request`, which arrived from `peerIP`. Every call is logged once.
    public func handle(_ request: Request, peerIP: String) async -> Reply {
        console("s> \(request.operation.rawValue) FROM \(request.user)")
        let reply: Reply
        switch request.command {
        case .register(let user):
            reply = .status(await store.write(.register(user: user)))
        case .unregister(let user):
            reply = .status(await store.write(.unregister(user: user)))
        case .connect(let user, let port):
            reply = .status(await store.write(.connect(user: user, ip: peerIP, port: port)))
        case .disconnect(let user):
            reply = .status(await store.write(.disconnect(user: user)))
        case .publish(let user, let fileName, let description):
            reply = .status(await store.write(.publish(user: user, fileName: fileName, description: description)))
        case .delete(let user, let fileName):
            reply = .status(await store.write(.delete(user: user, fileName: fileName)))
        case .listUsers(let user):
            reply = store.listUsers(requester: user)
        case .listContent(let user, let owner):
            reply = store.listContent(requester: user, owner: owner)
        }
        operationLog?.submit(
            OperationRecord(
                user: request.user,
                operation: request.operation.rawValue,
                fileName: request.fileName ?? "",
                dateTime: request.dateTime))
        return reply
    }
}
