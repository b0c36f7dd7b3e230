import Foundation
import P2POperationLog

/// Writes the server's console lines (`s> REGISTER FROM alice`) to standard output from its
/// own thread, so a slow or stalled reader of stdout (a paused terminal, a full pipe) never
/// blocks an event loop. Lines are written in order; when `capacity` lines are waiting, new
/// ones are dropped and counted, and the count is written once output moves again. Under load
/// lines gather for 10 ms between writes, which a person reading the console does not see.
public final class ConsoleWriter: Sendable {
    private let worker: BatchingWorker<String>

    public init(capacity: Int = 10_000, output: FileHandle = .standardOutput) {
        worker = BatchingWorker(name: "p2p-console", capacity: capacity, gatherTime: 0.01) { lines, dropped in
            var text = lines.joined(separator: "\n") + "\n"
            if dropped > 0 { text += "s> (\(dropped) console lines dropped: output was not read)\n" }
            try? output.write(contentsOf: Data(text.utf8))
            return .processed
        }
        worker.start()
    }

    /// Queues `line` (without newline); never blocks.
    public func write(_ line: String) {
        worker.submit(line)
    }

    /// Writes what is queued and stops the thread.
    public func close() {
        worker.stop()
    }
}
