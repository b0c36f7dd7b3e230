import COperationLog
import Foundation
import Logging
import P2PNetworkSupport
import P2POperationLog
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

/// Delivers operation records to the log server (`rpc/p2p-oplog`) over ONC-RPC.
///
/// ``submit(_:)`` only appends to a bounded in-memory queue; one dedicated thread makes the
/// RPC calls, which block, so neither the NIO event loops nor the Swift concurrency pool ever
/// wait for the log server. Records are sent in order, up to ``maxBatch`` per `PRINT_RESULTS`
/// call (version 2, with result codes; `PRINT_OPERATIONS` of version 1 to an older log
/// server), over one reused TCP client handle. When the log server is down or restarts, the
/// thread recreates the handle with exponential backoff and sends what the queue still holds;
/// records that do not fit in the queue meanwhile are dropped and counted.
/// A call that timed out may have been printed, so after an outage a record can be printed
/// twice, never out of order. Under load the thread lets records gather for ``gatherTime``
/// after each call, so that calls carry many records rather than a few: each call costs a
/// round trip and a wake-up on both sides, which took a sixth of a core at 14 000 requests/s.
public final class RPCOperationLog: OperationLogSink, Service, @unchecked Sendable {
    /// Records per call: the bound of the batch array in rpc/operations.x, which the log
    /// server enforces (a longer array is refused whole).
    public static let maxBatch = Int(OPLOG_MAX_BATCH)
    /// How long records may gather after a call before the next one; invisible in a log that
    /// people read, and short next to the call timeout.
    public static let gatherTime = 0.005

    public let host: String
    public let capacity: Int
    private let callTimeoutMilliseconds: UInt32
    private let logger: Logger
    private let worker: BatchingWorker<OperationRecord>

    // Only touched on the worker's thread.
    private var client: UnsafeMutablePointer<CLIENT>?
    /// The program version `client` speaks: 2 (with result codes) unless the log server only
    /// has version 1.
    private var clientVersion = UInt32(OPERATION_LOG_VERS_2)
    private var backoff = 0.05
    private var outage = false

    /// - Parameters:
    ///   - host: where rpcbind and the log server run.
    ///   - capacity: the most records held while the log server is slow or away.
    ///   - callTimeout: how long one call may take before the handle is dropped, in seconds.
    public init(host: String, capacity: Int = 100_000, callTimeout: Double = 1.0, logger: Logger) {
        self.host = host
        self.capacity = capacity
        self.callTimeoutMilliseconds = UInt32(max(0.01, callTimeout) * 1000)
        self.logger = logger
        // The worker's closures hold the log weakly: the log owns the worker.
        weak var log: RPCOperationLog?
        worker = BatchingWorker(
            name: "p2p-oplog-sender", capacity: capacity, maxBatch: Self.maxBatch, gatherTime: Self.gatherTime,
            process: { batch, dropped in log?.deliver(batch, droppedBefore: dropped) ?? .processed },
            onExit: { log?.destroyClient() })
        log = self
    }

    /// Starts the sender thread (``run()`` does this too).
    public func start() {
        // A call on a connection the log server closed would otherwise kill the process.
        signal(SIGPIPE, SIG_IGN)
        worker.start()
    }

    public func submit(_ record: OperationRecord) {
        worker.submit(record)
    }

    public var currentStatistics: OperationLogStatistics {
        Self.statistics(worker.currentCounters)
    }

    /// Runs until graceful shutdown, then sends what is queued (for at most `drainTimeout`).
    public func run() async throws {
        start()
        // Returns when the service group shuts down (or this task is cancelled).
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Stops the sender after trying, for at most `drainTimeout` seconds, to deliver what is
    /// still queued. Returns the final counters.
    @discardableResult
    public func shutdown(drainTimeout: Double = 2.0) async -> OperationLogStatistics {
        let deadline = Date().addingTimeInterval(drainTimeout)
        let worker = self.worker
        // The wait blocks: on a thread of its own, not in the concurrency pool.
        return await WorkerThread.run(named: "p2p-oplog-drain") {
            Self.statistics(worker.stop(waitingUntil: deadline))
        }
    }

    private static func statistics(_ counters: BatchingWorker<OperationRecord>.Counters) -> OperationLogStatistics {
        var result = OperationLogStatistics()
        result.delivered = counters.processed
        result.calls = counters.batches
        result.dropped = counters.dropped
        result.pending = counters.pending
        result.retries = counters.retries
        return result
    }

    // MARK: Sender thread

    /// One call with `batch`, over the handle kept from the last call (or a new one). On
    /// failure the handle is dropped and the batch retried after a backoff that doubles up to
    /// 2 s; the outage and the recovery are logged once each.
    private func deliver(_ batch: [OperationRecord], droppedBefore dropped: Int)
        -> BatchingWorker<OperationRecord>.Outcome
    {
        if dropped > 0 {
            logger.warning("operation log queue full: dropped \(dropped) records")
        }
        var error = [CChar](repeating: 0, count: 512)
        if client == nil {
            // Version 2 first; a log server from before it has only version 1.
            for version in [UInt32(OPERATION_LOG_VERS_2), UInt32(OPERATION_LOG_VERS)] {
                client = oplog_client_create(host, version, callTimeoutMilliseconds, &error, error.count)
                clientVersion = version
                if client != nil { break }
            }
        }
        if let handle = client, Self.send(batch, handle, version: clientVersion, &error) {
            if outage {
                logger.notice("operation log server at \(host) is back")
                outage = false
            }
            backoff = 0.05
            return .processed
        }
        destroyClient()
        if !outage {
            let reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            logger.warning("operation log server at \(host) unreachable (\(reason)); queueing records")
            outage = true
        }
        let delay = backoff
        backoff = min(backoff * 2, 2.0)
        return .retry(after: delay)
    }

    private func destroyClient() {
        oplog_client_destroy(client)
        client = nil
    }

    /// One call carrying `batch`; false (with the reason in `error`) when it failed.
    private static func send(
        _ batch: [OperationRecord], _ client: UnsafeMutablePointer<CLIENT>, version: UInt32, _ error: inout [CChar]
    ) -> Bool {
        let records = UnsafeMutablePointer<operation_result>.allocate(capacity: batch.count)
        var strings: [UnsafeMutablePointer<CChar>] = []
        strings.reserveCapacity(batch.count * 4)
        func copy(_ text: String) -> UnsafeMutablePointer<CChar> {
            let pointer = strdup(text)!
            strings.append(pointer)
            return pointer
        }
        for (index, record) in batch.enumerated() {
            records[index] = operation_result(
                record: operation_record(
                    user: copy(record.user),
                    operation: copy(record.operation),
                    file_name: copy(record.fileName),
                    date_time: copy(record.dateTime)),
                result: record.result ?? -1)
        }
        defer {
            for string in strings { free(string) }
            records.deallocate()
        }
        return oplog_client_send(client, version, records, UInt32(batch.count), &error, error.count) == 0
    }
}
