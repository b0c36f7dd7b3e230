import CoreMetrics
import Foundation
import Logging
import NIOCore
import Synchronization

/// Something wrong with a connection that the operator should hear about, but not once per
/// connection: a flood of them would otherwise fill the log (and the disk under it).
enum ConnectionProblem: Int, CaseIterable, Sendable {
    /// Closed at accept: `--max-connections` were open.
    case connectionLimit
    /// Closed at accept: its address had `--max-connections-per-address` open.
    case addressLimit
    /// `--proxy-protocol` and no valid PROXY header.
    case missingProxyHeader
    /// `--proxy-protocol` and the connection came from an address `--proxy-from` does not name.
    case untrustedProxy
    /// A request the protocol does not allow (PROTOCOL.md section 6).
    case badRequest
    /// The request did not arrive whole before the deadline (`--idle-timeout`).
    case timeout

    /// What the summary line counts.
    var summary: String {
        switch self {
        case .connectionLimit: "connections closed at accept: the connection limit was reached"
        case .addressLimit: "connections closed at accept: their address had reached its connection limit"
        case .missingProxyHeader: "connections closed without a valid PROXY header"
        case .untrustedProxy: "connections closed at accept: not from a load balancer named by --proxy-from"
        case .badRequest: "bad requests"
        case .timeout: "requests not complete before the deadline"
        }
    }

    /// The counter in `/metrics`: refused connections, or bad requests by reason.
    var metric: (label: String, reason: String) {
        switch self {
        case .connectionLimit: ("p2p_connections_refused_total", "connection_limit")
        case .addressLimit: ("p2p_connections_refused_total", "address_limit")
        case .missingProxyHeader: ("p2p_connections_refused_total", "no_proxy_header")
        case .untrustedProxy: ("p2p_connections_refused_total", "untrusted_proxy")
        case .badRequest: ("p2p_bad_requests_total", "malformed")
        case .timeout: ("p2p_bad_requests_total", "timeout")
        }
    }
}

/// Logs connection problems rate-limited: the first of each kind in an interval at once, with
/// its details; the rest counted, and at the end of the interval one summary line per kind with
/// the count and the addresses most of them came from. Every one is counted in `/metrics`.
///
/// ``flush()`` ends an interval; ``DirectoryServer`` calls it every
/// ``DirectoryServerConfiguration/problemReportInterval``.
final class ConnectionProblemReport: Sendable {
    /// Addresses remembered per kind and interval; beyond them, counted as "other addresses".
    static let addressesKept = 1000

    private struct Tally {
        var count = 0
        var byAddress: [String: Int] = [:]
        var otherAddresses = 0
    }

    private let tallies = Mutex<[Tally]>(Array(repeating: Tally(), count: ConnectionProblem.allCases.count))
    private let counters: [Counter]
    private let logger: Logger
    private let interval: TimeAmount

    init(logger: Logger, interval: TimeAmount, metrics: any MetricsFactory) {
        self.logger = logger
        self.interval = interval
        counters = ConnectionProblem.allCases.map { problem in
            Counter(label: problem.metric.label, dimensions: [("reason", problem.metric.reason)], factory: metrics)
        }
    }

    /// One problem from `ip`; `detail` is logged when it is the first of its kind in this interval.
    func record(_ problem: ConnectionProblem, from ip: String, detail: @autoclosure () -> String) {
        counters[problem.rawValue].increment()
        let first = tallies.withLock { tallies in
            var tally = tallies[problem.rawValue]
            tally.count += 1
            if tally.byAddress[ip] != nil || tally.byAddress.count < Self.addressesKept {
                tally.byAddress[ip, default: 0] += 1
            } else {
                tally.otherAddresses += 1
            }
            tallies[problem.rawValue] = tally
            return tally.count == 1
        }
        if first {
            logger.warning("\(detail())")
        }
    }

    /// Ends the interval: one line per kind that happened more than once in it.
    func flush() {
        let ended = tallies.withLock { tallies in
            defer { tallies = Array(repeating: Tally(), count: ConnectionProblem.allCases.count) }
            return tallies
        }
        let seconds = Double(interval.nanoseconds) / 1e9
        for problem in ConnectionProblem.allCases {
            let tally = ended[problem.rawValue]
            guard tally.count > 1 else { continue }
            let top = tally.byAddress.sorted { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }
                .prefix(3)
                .map { "\($0.key) (\($0.value))" }
            var from = top.joined(separator: ", ")
            if tally.byAddress.count > 3 || tally.otherAddresses > 0 {
                from += ", \(tally.byAddress.count - top.count) more addresses"
                if tally.otherAddresses > 0 { from += " and \(tally.otherAddresses) from addresses not kept" }
            }
            let window = String(format: "%g", seconds)
            logger.warning(
                "\(tally.count) \(problem.summary) in the last \(window) s (the first logged above); from \(from)")
        }
    }
}
