import Foundation

/// What ran and how it ended.
public struct CheckResult: Sendable {
    public var id: String
    public var proves: String
    public var outcome: Outcome
    public var seconds: Double
}

/// Which checks to run: `--only`, `--skip`, `--quick`.
public struct Selection: Sendable {
    public var only: [String]
    public var skip: [String]
    public var quick: Bool

    public init(only: [String] = [], skip: [String] = [], quick: Bool = false) {
        self.only = only
        self.skip = skip
        self.quick = quick
    }

    /// A pattern names a check by its id (`server.register`), its id without the group
    /// (`register`), or a whole group (`server`).
    static func matches(_ pattern: String, _ check: Check) -> Bool {
        pattern == check.id || pattern == check.group || "\(check.group).\(pattern)" == check.id
    }

    func includes(_ check: Check) -> Bool {
        if quick && !check.quick { return false }
        if !only.isEmpty && !only.contains(where: { Self.matches($0, check) }) { return false }
        return !skip.contains { Self.matches($0, check) }
    }

    /// Patterns that name no check at all (a typo the user should hear about).
    public func unknownPatterns(among checks: [Check]) -> [String] {
        (only + skip).filter { pattern in !checks.contains { Self.matches(pattern, $0) } }
    }
}

/// The checks of each command, made for the implementation's address.
public enum Conformance {
    public static func serverChecks(_ endpoint: Endpoint) -> [Check] { ServerChecks.all(endpoint) }

    public static func peerChecks(_ endpoint: Endpoint, file: String, expected: ExpectedFile?) -> [Check] {
        PeerChecks.all(endpoint, file: file, expected: expected)
    }

    public static func timeChecks(_ url: String) -> [Check] { TimeChecks.all(url) }

    public static func logChecks(_ host: String) -> [Check] { LogChecks.all(host) }

    /// Every check of every command (for `--help`).
    public static var catalogue: [Check] {
        let endpoint = Endpoint(host: "localhost", port: 1)
        return serverChecks(endpoint) + peerChecks(endpoint, file: "", expected: nil) + timeChecks("http://localhost")
            + logChecks("localhost")
    }

    /// Runs the selected checks in order, each reported to `report` as it ends. After a server
    /// check fails, `stillAnswers` is asked whether the implementation is still up; if not, the
    /// rest are skipped with that reason (so that one crash is one failure, not twenty).
    public static func run(
        _ checks: [Check], selection: Selection, stillAnswers: (@Sendable () async -> Bool)? = nil,
        report: (CheckResult) -> Void
    ) async -> [CheckResult] {
        var results: [CheckResult] = []
        var downAfter: String?
        for check in checks where selection.includes(check) {
            let started = ContinuousClock.now
            let outcome: Outcome
            if let downAfter {
                outcome = .skipped(reason: "the implementation stopped answering after \(downAfter)")
            } else {
                let context = CheckContext()
                do {
                    try await check.body(context)
                    outcome = .passed(note: context.passNote)
                } catch let failure as CheckFailed {
                    outcome = .failed(message: failure.message, exchanges: context.exchanges)
                } catch let skip as CheckSkipped {
                    outcome = .skipped(reason: skip.reason)
                } catch {
                    outcome = .failed(message: "\(error)", exchanges: context.exchanges)
                }
                await context.cleanUp()
                if outcome.isFailure, let stillAnswers, !(await stillAnswers()) {
                    downAfter = check.id
                }
            }
            let elapsed = ContinuousClock.now - started
            let result = CheckResult(
                id: check.id, proves: check.proves, outcome: outcome,
                seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
            report(result)
            results.append(result)
        }
        return results
    }

    /// Whether a directory server still answers a request (any code).
    public static func serverAnswers(_ endpoint: Endpoint) async -> Bool {
        let probe = DirectoryUnderTest(endpoint: endpoint, context: CheckContext())
        guard let reply = try? await probe.send(.listUsers(user: probe.user("alive"))) else { return false }
        _ = reply
        return true
    }
}

/// How results are shown.
public enum Report {
    /// One line per check (and, for a failure, the exchanges: the last two, or all `verbose`).
    public static func line(_ result: CheckResult, verbose: Bool) -> String {
        switch result.outcome {
        case .passed(let note):
            return "PASS  \(result.id)" + (note.map { "  (\($0))" } ?? "")
        case .skipped(let reason):
            return "SKIP  \(result.id): \(reason)"
        case .failed(let message, let exchanges):
            var text = "FAIL  \(result.id): \(message)"
            for exchange in verbose ? exchanges : Array(exchanges.suffix(2)) {
                text += "\n        sent     \(Exchange.show(exchange.sent))"
                text += "\n        received \(Exchange.show(exchange.received)) [\(exchange.ending)]"
            }
            return text
        }
    }

    public static func summary(_ results: [CheckResult]) -> String {
        let failed = results.filter(\.outcome.isFailure).count
        let skipped = results.filter { if case .skipped = $0.outcome { return true } else { return false } }.count
        let passed = results.count - failed - skipped
        return "\(passed) passed, \(failed) failed, \(skipped) skipped"
    }

    /// For graders and CI: every check with its outcome, exchanges included for failures.
    public static func json(_ results: [CheckResult], target: String) -> String {
        func exchangeObject(_ exchange: Exchange) -> [String: Any] {
            [
                "sent": Exchange.show(exchange.sent, limit: 4096),
                "received": Exchange.show(exchange.received, limit: 4096),
                "ending": exchange.ending,
            ]
        }
        let checks: [[String: Any]] = results.map { result in
            var object: [String: Any] = ["id": result.id, "proves": result.proves, "seconds": result.seconds]
            switch result.outcome {
            case .passed(let note):
                object["result"] = "passed"
                if let note { object["note"] = note }
            case .skipped(let reason):
                object["result"] = "skipped"
                object["reason"] = reason
            case .failed(let message, let exchanges):
                object["result"] = "failed"
                object["message"] = message
                object["exchanges"] = exchanges.map(exchangeObject)
            }
            return object
        }
        let failed = results.filter(\.outcome.isFailure).count
        let skipped = results.filter { if case .skipped = $0.outcome { return true } else { return false } }.count
        let document: [String: Any] = [
            "target": target, "checks": checks, "passed": results.count - failed - skipped, "failed": failed,
            "skipped": skipped,
        ]
        let data =
            (try? JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}
