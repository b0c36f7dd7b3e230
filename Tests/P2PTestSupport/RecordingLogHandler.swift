import Logging
import Synchronization

/// Keeps every message logged through it, for tests that check what a component logs.
public final class LogRecorder: Sendable {
    private let messages = Mutex<[String]>([])

    public init() {}

    /// Everything logged so far, oldest first.
    public var lines: [String] { messages.withLock { $0 } }

    /// A logger at `level` that records here.
    public func logger(level: Logger.Level = .trace) -> Logger {
        var logger = Logger(label: "recorded") { _ in Handler(recorder: self) }
        logger.logLevel = level
        return logger
    }

    fileprivate func record(_ line: String) { messages.withLock { $0.append(line) } }

    private struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            recorder.record("\(event.level) \(event.message)")
        }
    }
}
