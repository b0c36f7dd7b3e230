import COperationLog
import Foundation
import Logging
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

/// Delivers operation records to the log server (`rpc/p2p-oplog`) over ONC-RPC.
///
/// ``submit(_:)`` only appends to a bounded in-memory queue; one dedicated thread makes the
/// RPC calls, which block, so neither the NIO event loops nor the Swift concurrency pool ever
/// wait for the log server. Records are sent in order, up to ``maxBatch`` per
/// `PRINT_OPERATIONS` call, over one reused TCP client handle. When the log server is down
/// or restarts, the thread recreates the handle with exponential backoff and sends what the
/// queue still holds; records that do not fit in the queue meanwhile are dropped and counted.
/// A call that timed out may have been printed, so after an outage a record can be printed
/// twice, never out of order. Under load the thread lets records gather for ``gatherTime``
/// after each call, so that calls carry many records rather than a few: each call costs a
/// round trip and a wake-up on both sides, which took a sixth of a core at 14 000 requests/s.
public final class RPCOperationLog: OperationLogSink, Service, @unchecked Sendable {
    public static let maxBatch = 256
    /// How long records may gather after a call before the next one; invisible in a log that
    /// people read, and short next to the call timeout.
    public static let gatherTime = 0.005

    public let host: String
    public let capacity: Int
    private let callTimeoutMilliseconds: UInt32
    private let logger: Logger

    // Everything below is guarded by `condition`.
    private let condition = NSCondition()
    private var queue: [OperationRecord] = []
    private var queueHead = 0
    private var statistics = OperationLogStatistics()
    private var droppedSinceReport = 0
    private var stopping = false
    private var stopped = false
    private var started = false
    /// True while the sender waits for a first record; only then does a new record wake it.
    private var idle = false

    /// - Parameters:
    ///   - host: where rpcbind and the log server run.
    ///   - capacity: the most records held while the log server is slow or away.
    ///   - callTimeout: how long one call may take before the handle is dropped, in seconds.
    public init(host: String, capacity: Int = 100_000, callTimeout: Double = 1.0, logger: Logger) {
        self.host = host
        self.capacity = capacity
        self.callTimeoutMilliseconds = UInt32(max(0.01, callTimeout) * 1000)
        self.logger = logger
    }

    /// Starts the sender thread (``run()`` does this too).
    public func start() {
        condition.lock()
        defer { condition.unlock() }
        guard !started else { return }
        started = true
        // A call on a connection the log server closed would otherwise kill the process.
        signal(SIGPIPE, SIG_IGN)
        let thread = Thread { [self] in senderLoop() }
        thread.name = "p2p-oplog-sender"
        thread.start()
    }

    public func submit(_ record: OperationRecord) {
        condition.lock()
        defer { condition.unlock() }
        if queue.count - queueHead >= capacity {
            statistics.dropped += 1
            droppedSinceReport += 1
            return
        }
        queue.append(record)
        // Wake the sender only when it waits for work: while it gathers a batch or makes a
        // call, a wake-up per record would cost a context switch per request.
        if idle {
            idle = false
            condition.signal()
        }
    }

    public var currentStatistics: OperationLogStatistics {
        condition.lock()
        defer { condition.unlock() }
        var result = statistics
        result.pending = queue.count - queueHead
        return result
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
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread { [self] in
                condition.lock()
                stopping = true
                condition.broadcast()
                if started {
                    while !stopped, condition.wait(until: deadline) {}
                }
                var result = statistics
                result.pending = queue.count - queueHead
                condition.unlock()
                continuation.resume(returning: result)
            }
        }
    }

    // MARK: Sender thread

    private func senderLoop() {
        var client: UnsafeMutablePointer<CLIENT>?
        var backoff = 0.05
        var outage = false
        defer {
            oplog_client_destroy(client)
            condition.lock()
            stopped = true
            condition.broadcast()
            condition.unlock()
        }
        while true {
            condition.lock()
            while queue.count == queueHead && !stopping {
                idle = true
                condition.wait()
            }
            idle = false
            if queue.count == queueHead && stopping {
                condition.unlock()
                return
            }
            let end = min(queue.count, queueHead + Self.maxBatch)
            let batch = Array(queue[queueHead..<end])
            let dropped = droppedSinceReport
            droppedSinceReport = 0
            condition.unlock()

            if dropped > 0 {
                logger.warning("operation log queue full: dropped \(dropped) records")
            }

            var error = [CChar](repeating: 0, count: 512)
            if client == nil {
                client = oplog_client_create(host, callTimeoutMilliseconds, &error, error.count)
            }
            if let handle = client, Self.send(batch, handle, &error) {
                condition.lock()
                queueHead = end
                statistics.delivered += batch.count
                statistics.calls += 1
                // Compact now and then instead of shifting the array on every call.
                if queueHead > 4096 && queueHead * 2 > queue.count {
                    queue.removeFirst(queueHead)
                    queueHead = 0
                }
                condition.unlock()
                if outage {
                    logger.notice("operation log server at \(host) is back")
                    outage = false
                }
                backoff = 0.05
                gather(for: Self.gatherTime)
                continue
            }
            oplog_client_destroy(client)
            client = nil
            if !outage {
                let reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                logger.warning("operation log server at \(host) unreachable (\(reason)); queueing records")
                outage = true
            }
            // Wait before retrying; a shutdown wakes the wait, and then one last try follows.
            condition.lock()
            if stopping {
                condition.unlock()
                return
            }
            _ = condition.wait(until: Date().addingTimeInterval(backoff))
            condition.unlock()
            backoff = min(backoff * 2, 2.0)
        }
    }

    /// Waits `seconds` for records to gather, unless a full batch is already queued or a
    /// shutdown comes first; records arriving meanwhile do not wake it. (A backlog after an
    /// outage is sent call after call, without waiting.)
    private func gather(for seconds: Double) {
        let deadline = Date().addingTimeInterval(seconds)
        condition.lock()
        while !stopping && queue.count - queueHead < Self.maxBatch && condition.wait(until: deadline) {}
        condition.unlock()
    }

    /// One call carrying `batch`; false (with the reason in `error`) when it failed.
    private static func send(_ batch: [OperationRecord], _ client: UnsafeMutablePointer<CLIENT>, _ error: inout [CChar])
        -> Bool
    {
        let records = UnsafeMutablePointer<operation_record>.allocate(capacity: batch.count)
        var strings: [UnsafeMutablePointer<CChar>] = []
        strings.reserveCapacity(batch.count * 4)
        func copy(_ text: String) -> UnsafeMutablePointer<CChar> {
            let pointer = strdup(text)!
            strings.append(pointer)
            return pointer
        }
        for (index, record) in batch.enumerated() {
            records[index] = operation_record(
                user: copy(record.user),
                operation: copy(record.operation),
                file_name: copy(record.fileName),
                date_time: copy(record.dateTime))
        }
        defer {
            for string in strings { free(string) }
            records.deallocate()
        }
        return oplog_client_send(client, records, UInt32(batch.count), &error, error.count) == 0
    }
}
