import Foundation

/// Writes the server's console lines (`s> REGISTER FROM alice`) to standard output from its
/// own thread, so a slow or stalled reader of stdout (a paused terminal, a full pipe) never
/// blocks an event loop. Lines are written in order; when `capacity` lines are waiting, new
/// ones are dropped and counted, and the count is written once output moves again.
public final class ConsoleWriter: @unchecked Sendable {
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var lines: [String] = []
    private var dropped = 0
    private var closed = false
    private var finished = false
    /// True while the thread waits for a first line; only then does a new line wake it.
    private var idle = false

    private let capacity: Int
    private let output: FileHandle

    public init(capacity: Int = 10_000, output: FileHandle = .standardOutput) {
        self.capacity = capacity
        self.output = output
        let thread = Thread { [self] in run() }
        thread.name = "p2p-console"
        thread.start()
    }

    /// Queues `line` (without newline); never blocks.
    public func write(_ line: String) {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return }
        if lines.count >= capacity {
            dropped += 1
            return
        }
        lines.append(line)
        // Wake the thread only when it waits for work: while it gathers a batch, a wake-up
        // per line would cost a context switch per request.
        if idle {
            idle = false
            condition.signal()
        }
    }

    /// Writes what is queued and stops the thread.
    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        while !finished { condition.wait() }
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while lines.isEmpty && !closed {
                idle = true
                condition.wait()
            }
            idle = false
            let batch = lines
            let droppedNow = dropped
            lines.removeAll(keepingCapacity: true)
            dropped = 0
            let done = closed && batch.isEmpty
            condition.unlock()
            if done { break }
            var text = batch.joined(separator: "\n") + "\n"
            if droppedNow > 0 { text += "s> (\(droppedNow) console lines dropped: output was not read)\n" }
            try? output.write(contentsOf: Data(text.utf8))
            // Under load, gather lines for a moment rather than waking up for every request;
            // 10 ms is not visible to a person reading the console.
            condition.lock()
            if !closed { _ = condition.wait(until: Date().addingTimeInterval(0.01)) }
            condition.unlock()
        }
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }
}
