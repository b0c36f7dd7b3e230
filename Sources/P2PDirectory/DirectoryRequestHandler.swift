import NIOCore
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

    /// Answers `request`, which arrived from `peerIP` (only evaluated for CONNECT, which stores
    /// it): `completion` gets the reply, at once for reads, and for changes once committed, on
    /// `eventLoop` (the caller's). Every call is logged once.
    public func handle(
        _ request: Request,
        peerIP: @autoclosure () -> String,
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable (Reply) -> Void
    ) {
        console("s> \(request.operation.rawValue) FROM \(request.user)")
        operationLog?.submit(
            OperationRecord(
                user: request.user,
                operation: request.operation.rawValue,
                fileName: request.fileName ?? "",
                dateTime: request.dateTime))
        let change: DirectoryChange
        switch request.command {
        case .register(let user):
            change = .register(user: user)
        case .unregister(let user):
            change = .unregister(user: user)
        case .connect(let user, let port):
            change = .connect(user: user, ip: peerIP(), port: port)
        case .disconnect(let user):
            change = .disconnect(user: user)
        case .publish(let user, let fileName, let description):
            change = .publish(user: user, fileName: fileName, description: description)
        case .delete(let user, let fileName):
            change = .delete(user: user, fileName: fileName)
        case .listUsers(let user):
            return completion(store.listUsers(requester: user))
        case .listContent(let user, let owner):
            return completion(store.listContent(requester: user, owner: owner))
        }
        store.write(change, on: eventLoop) { completion(.status($0)) }
    }
}
