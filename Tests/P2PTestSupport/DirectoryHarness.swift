import Foundation
import Logging
import NIOCore
import P2PDirectory
import P2POperationLog
import P2PProtocol
import Synchronization

/// Keeps the records a directory server submits, for assertions.
public final class RecordingOperationLog: OperationLogSink {
    private let storage = Mutex<[OperationRecord]>([])
    /// Also receives every record, when set (the real RPC log in end-to-end tests).
    private let forward: (any OperationLogSink)?

    public init(forwardingTo forward: (any OperationLogSink)? = nil) {
        self.forward = forward
    }

    public func submit(_ record: OperationRecord) {
        storage.withLock { $0.append(record) }
        forward?.submit(record)
    }

    public var records: [OperationRecord] { storage.withLock { $0 } }
}

/// A directory server running in this process on 127.0.0.1 with an ephemeral port and a
/// SQLite file in a temporary folder.
public final class DirectoryHarness: Sendable {
    public let dataDirectory: String
    public let server: DirectoryServer
    public let store: DirectoryStore
    public let operationLog: RecordingOperationLog
    private let task: Task<Void, any Error>

    public var address: SocketAddress { server.localAddress }

    public init(
        dataDirectory: String,
        configuration: DirectoryServerConfiguration = .init(host: "127.0.0.1", port: 0),
        operationLog: RecordingOperationLog = RecordingOperationLog()
    ) async throws {
        self.dataDirectory = dataDirectory
        self.operationLog = operationLog
        let store = try DirectoryStore(dataDirectory: dataDirectory)
        self.store = store
        var logger = Logger(label: "test-directory")
        logger.logLevel = ProcessInfo.processInfo.environment["P2P_TEST_LOG"] != nil ? .debug : .critical
        let handler = DirectoryRequestHandler(store: store, operationLog: operationLog) { _ in }
        let server = try await DirectoryServer.bind(configuration: configuration, handler: handler, logger: logger)
        self.server = server
        task = Task { try await server.run() }
    }

    /// Stops accepting, waits for the requests in flight and closes the database.
    public func shutdown() async throws {
        server.stop()
        try await task.value
        try store.close()
    }

    /// A request stamped with a fixed date-time.
    public func send(_ command: Request.Command, dateTime: String = "25/11/2026 13:05:09") async throws -> Reply {
        try await RawConnection.send(Request(dateTime: dateTime, command: command), to: address)
    }
}
