import CoreMetrics
import P2PProtocol

/// The directory server's metrics, made through swift-metrics with one factory (Prometheus's
/// behind `p2p-server --http-port`, a no-op one otherwise): requests by operation and result
/// code, request latency by operation (SEARCH's included), open connections, commits and
/// changes per commit.
public final class DirectoryMetrics: Sendable {
    /// Indexed by operation, then by result code (0 to the operation's "other error" code: the
    /// codes it can give).
    private let requests: [DirectoryOperation: [Counter]]
    private let durations: [DirectoryOperation: Timer]
    let openConnections: Gauge
    package let commits: Counter
    package let changesPerCommit: Recorder
    /// Where the server's other metrics (refused connections, bad requests) are made.
    let factory: any MetricsFactory

    /// Buckets of `p2p_request_duration_seconds` for a Prometheus factory: from 50 us, where
    /// most requests end, to 1 s (the factory's default starts at 5 ms).
    public static let durationBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
        .microseconds(2500), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
    ]

    /// Metrics that go nowhere.
    public static let none = DirectoryMetrics(factory: NOOPMetricsHandler.instance)

    public init(factory: any MetricsFactory) {
        var requests: [DirectoryOperation: [Counter]] = [:]
        var durations: [DirectoryOperation: Timer] = [:]
        for operation in DirectoryOperation.allCases {
            requests[operation] = (0...operation.otherErrorCode.rawValue).map { code in
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
        self.factory = factory
        openConnections = Gauge(label: "p2p_open_connections", factory: factory)
        commits = Counter(label: "p2p_store_commits_total", factory: factory)
        changesPerCommit = Recorder(label: "p2p_store_changes_per_commit", aggregate: true, factory: factory)
    }

    /// One request answered with `code`, `nanoseconds` after it had arrived whole.
    func served(_ operation: DirectoryOperation, code: ResultCode, nanoseconds: Int64) {
        if let counters = requests[operation], Int(code.rawValue) < counters.count {
            counters[Int(code.rawValue)].increment()
        }
        durations[operation]?.recordNanoseconds(nanoseconds)
    }
}
