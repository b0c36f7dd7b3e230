import CoreMetrics
import P2PProtocol

/// The directory server's metrics, made through swift-metrics with one factory (Prometheus's
/// behind `p2p-server --http-port`, a no-op one otherwise): requests by operation and result
/// code, request latency by operation (SEARCH's included), open connections, commits and
/// changes per commit.
public final class DirectoryMetrics: Sendable {
    /// Indexed by operation, then by result code (0 to 9).
    private let requests: [DirectoryOperation: [Counter]]
    private let durations: [DirectoryOperation: Timer]
    let openConnections: Gauge
    let commits: Counter
    let changesPerCommit: Recorder

    /// Metrics that go nowhere.
    public static let none = DirectoryMetrics(factory: NOOPMetricsHandler.instance)

    public init(factory: any MetricsFactory) {
        var requests: [DirectoryOperation: [Counter]] = [:]
        var durations: [DirectoryOperation: Timer] = [:]
        for operation in DirectoryOperation.allCases {
            requests[operation] = (0...9).map { code in
                Counter(
                    label: "p2p_requests_total",
                    dimensions: [("operation", operation.rawValue), ("code", String(code))], factory: factory)
            }
            durations[operation] = Timer(
                label: "p2p_request_duration_seconds", dimensions: [("operation", operation.rawValue)],
                factory: factory)
        }
        self.requests = requests
        self.durations = durations
        openConnections = Gauge(label: "p2p_open_connections", factory: factory)
        commits = Counter(label: "p2p_store_commits_total", factory: factory)
        changesPerCommit = Recorder(label: "p2p_store_changes_per_commit", aggregate: true, factory: factory)
    }

    /// One request answered with `code`, `nanoseconds` after it had arrived whole.
    func served(_ operation: DirectoryOperation, code: ResultCode, nanoseconds: Int64) {
        requests[operation]?[Int(code.rawValue)].increment()
        durations[operation]?.recordNanoseconds(nanoseconds)
    }
}
