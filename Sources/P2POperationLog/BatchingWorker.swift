import Foundation
import P2PNetworkSupport

#if canImport(Glibc)
    import Glibc
#endif

/// A bounded queue that one dedicated thread drains in batches: the shape shared by the
/// operation-log sender and the server's console writer, whose work (an RPC call, a write to
/// stdout) blocks and so must stay off the event loops and the Swift concurrency pool.
///
/// - ``submit(_:)`` never blocks: when ``capacity`` elements wait, new ones are dropped and
///   counted, and the next batch is told how many.
/// - The thread is woken only when it waits for a first element; while it works or gathers,
///   a wake-up per element would cost a context switch per request.
/// - After each batch it lets elements gather for ``gatherTime`` (unless a full batch is
///   already waiting or it is stopping), so that under load a batch carries many elements.
/// - A batch that could not be processed stays at the head of the queue and is tried again
///   after the delay its processor asks for.
public final class BatchingWorker<Element: Sendable>: @unchecked Sendable {
    /// What became of a batch.
    public enum Outcome: Sendable {
        /// Done: take it off the queue.
        case processed
        /// Not done: keep it and try again after this many seconds (or at once when stopping
        /// is asked, for one last try).
        case retry(after: Double)
    }

    /// The most elements waiting at once.
    public let capacity: Int
    /// The most elements handed to the processor at once.
    public let maxBatch: Int
    /// How long elements may gather after a batch, in seconds.
    public let gatherTime: Double

    private let name: String
    private let niceness: Int32
    private let process: ([Element], _ droppedSinceLastBatch: Int) -> Outcome
    private let onExit: () -> Void

    // Everything below is guarded by `condition`.
    private let condition = NSCondition()
    private var queue: [Element] = []
    private var head = 0
    private var droppedSinceReport = 0
    private var counters = Counters()
    private var started = false
    private var stopping = false
    private var finished = false
    /// True while the thread waits for a first element; only then does a new one wake it.
    private var idle = false

    /// Counts kept by the worker.
    public struct Counters: Sendable, Hashable {
        /// Elements processed.
        public var processed = 0
        /// Batches processed.
        public var batches = 0
        /// Elements dropped because the queue was full.
        public var dropped = 0
        /// Batches that failed and were tried again.
        public var retries = 0
        /// Elements waiting.
        public var pending = 0
    }

    /// - Parameters:
    ///   - process: called on the worker's thread with each batch, in order, and the number of
    ///     elements dropped since the last call.
    ///   - niceness: the thread's scheduling niceness (Linux: per thread), 0 for the process's;
    ///     positive for work that must yield the cores to request serving.
    ///   - onExit: called on the worker's thread when it stops.
    public init(
        name: String,
        capacity: Int,
        maxBatch: Int = .max,
        gatherTime: Double,
        niceness: Int32 = 0,
        process: @escaping ([Element], _ droppedSinceLastBatch: Int) -> Outcome,
        onExit: @escaping () -> Void = {}
    ) {
        self.name = name
        self.niceness = niceness
        self.capacity = capacity
        self.maxBatch = maxBatch
        self.gatherTime = gatherTime
        self.process = process
        self.onExit = onExit
    }

    /// Starts the thread (once).
    public func start() {
        condition.lock()
        defer { condition.unlock() }
        guard !started else { return }
        started = true
        WorkerThread.start(named: name) { [self] in run() }
    }

    /// Queues `element`; false when it was dropped (queue full, or stopping).
    @discardableResult
    public func submit(_ element: Element) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return false }
        if queue.count - head >= capacity {
            counters.dropped += 1
            droppedSinceReport += 1
            return false
        }
        queue.append(element)
        if idle {
            idle = false
            condition.signal()
        }
        return true
    }

    public var currentCounters: Counters {
        condition.lock()
        defer { condition.unlock() }
        var result = counters
        result.pending = queue.count - head
        return result
    }

    /// Stops taking elements, lets the thread process what is queued and waits for it to end,
    /// until `deadline` at most (nil: however long it takes). Blocks the calling thread.
    /// Returns the final counters.
    @discardableResult
    public func stop(waitingUntil deadline: Date? = nil) -> Counters {
        condition.lock()
        stopping = true
        condition.broadcast()
        if started {
            while !finished {
                if let deadline {
                    if !condition.wait(until: deadline) { break }
                } else {
                    condition.wait()
                }
            }
        }
        var result = counters
        result.pending = queue.count - head
        condition.unlock()
        return result
    }

    private func run() {
        #if os(Linux)
            if niceness != 0 {
                // On Linux niceness belongs to each thread, and `who` 0 is the calling thread
                // (setpriority(2), NOTES).
                _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, niceness)
            }
        #endif
        defer {
            onExit()
            condition.lock()
            finished = true
            condition.broadcast()
            condition.unlock()
        }
        while true {
            condition.lock()
            while queue.count == head && !stopping {
                idle = true
                condition.wait()
            }
            idle = false
            if queue.count == head {
                condition.unlock()
                return
            }
            let end = queue.count - head > maxBatch ? head + maxBatch : queue.count
            let batch = Array(queue[head..<end])
            let dropped = droppedSinceReport
            droppedSinceReport = 0
            condition.unlock()

            switch process(batch, dropped) {
            case .processed:
                condition.lock()
                head = end
                counters.processed += batch.count
                counters.batches += 1
                // Compact now and then instead of shifting the array after every batch.
                if head > 4096 && head * 2 > queue.count {
                    queue.removeFirst(head)
                    head = 0
                }
                condition.unlock()
                gather()
            case .retry(let delay):
                condition.lock()
                counters.retries += 1
                if stopping {
                    condition.unlock()
                    return
                }
                _ = condition.wait(until: Date().addingTimeInterval(delay))
                condition.unlock()
            }
        }
    }

    /// Waits `gatherTime` for elements to gather, unless a full batch is already queued or a
    /// stop comes first; elements arriving meanwhile do not wake it.
    private func gather() {
        let deadline = Date().addingTimeInterval(gatherTime)
        condition.lock()
        while !stopping && queue.count - head < maxBatch && condition.wait(until: deadline) {}
        condition.unlock()
    }
}
