import Foundation
import Synchronization

/// One rule of docs/PROTOCOL.md, checked from outside against a running implementation.
public struct Check: Sendable {
    /// Stable name, `group.rule` (`server.register-twice`): what `--only` and `--skip` take.
    public let id: String
    /// What passing it proves, in one line (`--help` lists these).
    public let proves: String
    /// Whether `--quick` runs it.
    public let quick: Bool
    let body: @Sendable (CheckContext) async throws -> Void

    init(
        _ id: String, quick: Bool = false, proves: String,
        _ body: @escaping @Sendable (CheckContext) async throws -> Void
    ) {
        self.id = id
        self.proves = proves
        self.quick = quick
        self.body = body
    }

    /// The group: `server`, `peer`, `time` or `oplog`.
    public var group: String { String(id.prefix { $0 != "." }) }
}

/// What a check ended with.
public enum Outcome: Sendable, Equatable {
    case passed(note: String?)
    case failed(message: String, exchanges: [Exchange])
    case skipped(reason: String)

    public var isFailure: Bool {
        if case .failed = self { return true }
        return false
    }
}

/// Bytes sent to the implementation and what came back, kept for a failure's report.
public struct Exchange: Sendable, Equatable {
    public var sent: [UInt8]
    public var received: [UInt8]
    /// How it ended: closed by the implementation, timed out, refused, ...
    public var ending: String

    /// `"REGISTER·03/12/2026 10:00:00·x·"`: text with NUL shown as `·` and other bytes in hex.
    public static func show(_ bytes: [UInt8], limit: Int = 160) -> String {
        var text = ""
        for byte in bytes.prefix(limit) {
            switch byte {
            case 0: text += "·"
            case 0x20..<0x7F: text.append(Character(UnicodeScalar(byte)))
            default: text += String(format: "\\x%02x", byte)
            }
        }
        if bytes.count > limit { text += "… (\(bytes.count) bytes)" }
        return text
    }
}

/// A check did not hold: why, in terms of the rule.
public struct CheckFailed: Error, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
}

/// A check cannot run here (its reason is reported, it does not count as a failure).
public struct CheckSkipped: Error, Sendable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}

/// What a running check may use: the exchanges it made (for the report), a note to pass on,
/// and what to undo when it ends.
public final class CheckContext: Sendable {
    private struct State {
        var exchanges: [Exchange] = []
        var note: String?
        var cleanups: [@Sendable () async -> Void] = []
    }

    private let state = Mutex(State())

    func record(_ exchange: Exchange) {
        state.withLock { $0.exchanges.append(exchange) }
    }

    var exchanges: [Exchange] { state.withLock { $0.exchanges } }

    /// A remark shown next to "passed" (the encoding detected, say).
    func note(_ text: String) {
        state.withLock { $0.note = text }
    }

    var passNote: String? { state.withLock { $0.note } }

    /// Something to undo once the check has ended, passed or not (the users it made); run in
    /// reverse order.
    func atEnd(_ body: @escaping @Sendable () async -> Void) {
        state.withLock { $0.cleanups.append(body) }
    }

    func cleanUp() async {
        let bodies = state.withLock { state in
            defer { state.cleanups = [] }
            return state.cleanups
        }
        for body in bodies.reversed() { await body() }
    }
}

/// Fails the check with `message` unless `condition` holds.
func require(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw CheckFailed(message()) }
}
