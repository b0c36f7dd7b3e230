import Foundation
import Logging
import NIOCore
import P2PDirectory
import P2PDirectoryStores
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

/// A directory server running in this process on 127.0.0.1 with an ephemeral port, built by
/// the same ``DirectoryApplication/build(configuration:store:operationLog:console:logger:eventLoopGroup:)``
/// as `p2p-server`, with its store (by default a SQLite file) in a temporary folder.
public final class DirectoryHarness: Sendable {
    public let dataDirectory: String
    public let application: DirectoryApplication
    public let operationLog: RecordingOperationLog
    private let task: Task<Void, any Error>

    public var server: DirectoryServer { application.server }
    public var store: any DirectoryStore { application.store }
    public var address: SocketAddress { server.localAddress }

    public init(
        dataDirectory: String,
        store: DirectoryStoreLocation? = nil,
        configuration: DirectoryServerConfiguration = .init(host: "127.0.0.1", port: 0),
        peerChecks: PeerCheckSettings? = nil,
        relay: RelaySettings = RelaySettings(),
        metrics: DirectoryMetrics = .none,
        operationLog: RecordingOperationLog = RecordingOperationLog(),
        logger: Logger? = nil
    ) async throws {
        self.dataDirectory = dataDirectory
        self.operationLog = operationLog
        // Quiet unless asked for (P2P_TEST_LOG), when the test gives no logger of its own.
        let logger =
            logger
            ?? {
                var quiet = Logger(label: "test-directory")
                quiet.logLevel = ProcessInfo.processInfo.environment["P2P_TEST_LOG"] != nil ? .debug : .critical
                return quiet
            }()
        let application = try await DirectoryApplication.build(
            configuration: configuration, store: store ?? .sqlite(dataDirectory: dataDirectory),
            operationLog: operationLog, peerChecks: peerChecks, relay: relay, metrics: metrics, console: { _ in },
            logger: logger)
        self.application = application
        task = Task { try await application.run() }
    }

    /// Runs `body` against a fresh server in a fresh temporary folder, and removes both
    /// afterwards, whether `body` succeeds or not.
    public static func with<Result>(
        _ configuration: DirectoryServerConfiguration = .init(host: "127.0.0.1", port: 0),
        _ body: (DirectoryHarness) async throws -> Result
    ) async throws -> Result {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let harness = try await DirectoryHarness(dataDirectory: folder.path, configuration: configuration)
        let result: Result
        do {
            result = try await body(harness)
        } catch {
            try? await harness.shutdown()
            throw error
        }
        try await harness.shutdown()
        return result
    }

    /// Stops accepting, waits for the requests in flight and closes the store.
    public func shutdown() async throws {
        server.stop()
        try await task.value
    }

    /// A request stamped with a fixed date-time, sent from `sourceIP` (any port) when given.
    public func send(
        _ command: Request.Command, dateTime: String = "25/11/2026 13:05:09", from sourceIP: String? = nil
    ) async throws -> Reply {
        let source = try sourceIP.map { try SocketAddress(ipAddress: $0, port: 0) }
        return try await RawConnection.send(Request(dateTime: dateTime, command: command), to: address, from: source)
    }
}
