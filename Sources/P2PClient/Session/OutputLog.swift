import Synchronization

/// The session's recent output, numbered, for the web face's console: what the shell printed
/// (result lines and the reasons on stderr), whoever typed the command. Holds the last
/// ``capacity`` entries.
public final class OutputLog: Sendable {
    public struct Entry: Sendable, Equatable {
        public enum Kind: String, Sendable {
            /// A result line or a listing (stdout).
            case line
            /// A reason or a hint (stderr).
            case diagnostic
        }

        /// 1, 2, ...: a reader asks for what came after the last it saw.
        public let number: Int
        public let kind: Kind
        public let text: String
    }

    public let capacity: Int
    private let entries = Mutex<(next: Int, kept: [Entry])>((1, []))

    public init(capacity: Int = 1000) {
        self.capacity = capacity
    }

    public func append(_ kind: Entry.Kind, _ text: String) {
        entries.withLock { entries in
            entries.kept.append(Entry(number: entries.next, kind: kind, text: text))
            entries.next += 1
            if entries.kept.count > capacity { entries.kept.removeFirst(entries.kept.count - capacity) }
        }
    }

    /// The entries numbered above `number`, oldest first (as many as are still kept).
    public func entries(after number: Int) -> [Entry] {
        entries.withLock { entries in
            guard let first = entries.kept.first else { return [] }
            return Array(entries.kept.dropFirst(max(0, number - first.number + 1)))
        }
    }

    /// The number of the newest entry (0 before any).
    public var last: Int { entries.withLock { $0.next - 1 } }

    /// `output` that also writes here.
    public func tee(_ output: ClientOutput) -> ClientOutput {
        ClientOutput(
            line: { line in
                self.append(.line, line)
                output.line(line)
            },
            diagnostic: { text in
                self.append(.diagnostic, text)
                output.diagnostic(text)
            },
            progress: output.progress)
    }
}
