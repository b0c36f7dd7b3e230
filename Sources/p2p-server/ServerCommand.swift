import ArgumentParser
import CoreMetrics
import Foundation
import Hummingbird
import Logging
import NIOCore
import P2PDirectory
import P2PDirectoryStores
import P2PDirectoryWeb
import P2PNetworkSupport
import P2POperationLog
import P2PProtocol
import P2PRPCOperationLog
import Prometheus
import ServiceLifecycle
import Synchronization

extension ResultCodeEncoding: ExpressibleByArgument {}

/// An option that is on or off.
enum Switch: String, ExpressibleByArgument, CaseIterable {
    case on, off
}

/// `p2p-server`: serves the directory (the default), or copies one into PostgreSQL.
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2p-server",
        abstract: "The directory server of the P2P file-sharing system.",
        discussion: """
            'p2p-server [OPTIONS]' serves the directory; 'p2p-server help serve' lists its options \
            (port, store, owner check, web page, ...).
            """,
        subcommands: [ServeCommand.self, CopyDirectoryCommand.self, UnbindCommand.self],
        defaultSubcommand: ServeCommand.self)
}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the directory (what p2p-server does when no subcommand is named).",
        discussion: """
            Keeps who is registered, who is connected at which address and which files each user \
            publishes, by default in <data-dir>/directory.sqlite (see --store). Sends one record \
            per request to the operation-log RPC server unless --no-oplog is given.
            """)

    @Option(name: .shortAndLong, help: "TCP port to listen on.")
    var port: Int = 4242

    @Option(
        help: """
            Address to listen on: 0.0.0.0 every IPv4 address, :: every IPv6 and IPv4 address (one \
            dual-stack socket; IPv4 clients are recorded and listed as plain IPv4), or one address.
            """)
    var host: String = "0.0.0.0"

    @Option(
        help: "Folder holding directory.sqlite (created if missing), when --store is not given; one server per folder.")
    var dataDir: String = "./storage"

    @Option(
        help: """
            Where the directory is kept: sqlite:PATH (or just PATH), a SQLite database file \
            (default: <data-dir>/directory.sqlite), or postgres://USER:PASSWORD@HOST:PORT/DB, a \
            PostgreSQL database that several servers can share (default: $P2P_STORE if set).
            """)
    var store: String?

    @Option(help: "How result codes go on the wire: ascii (\"0\\0\") or byte (one raw byte).")
    var resultEncoding: ResultCodeEncoding = .ascii

    @Option(help: "Seconds a connection may take to deliver its whole request.")
    var idleTimeout: Double = 5

    @Option(help: "Connections served at once; further ones are closed at once.")
    var maxConnections: Int = 1024

    @Option(
        help: """
            Connections served at once from one client address (behind --proxy-protocol, the \
            address in the PROXY header); further ones are closed at once. 0: no limit.
            """)
    var maxConnectionsPerAddress: Int = 256

    @Option(
        help: """
            Event-loop threads serving connections (default: one less than the number of cores, \
            at least 1; the SQLite writer and the log and console threads need the last one).
            """)
    var threads: Int?

    @Option(
        help: """
            on: DISCONNECT, UNREGISTER, PUBLISH and DELETE of a connected user are accepted only \
            from the IP address it connected from; off: from anywhere (for networks where a \
            client's address changes).
            """)
    var ownerCheck: Switch = .on

    @Flag(
        help: """
            Behind a TCP load balancer (HAProxy send-proxy or send-proxy-v2): every connection \
            starts with a PROXY protocol header (v1 or v2) whose client address stands for the \
            connection's; a connection without a valid one is closed with a log line.
            """)
    var proxyProtocol = false

    @Option(
        help: """
            With --proxy-protocol: the load balancers whose PROXY headers are believed, \
            comma-separated addresses or networks (ADDR or ADDR/PREFIX); a connection from \
            anywhere else is closed before a byte of it is read.
            """)
    var proxyFrom: String = "127.0.0.0/8,::1"

    @Option(
        help: """
            Where the other servers sharing the store reach this one (HOST:PORT), to carry a \
            relay's side here (default: the address it listens on; 127.0.0.1 or ::1 when that \
            is every address, for servers on one machine). They must be in its --proxy-from.
            """)
    var clusterAddress: String?

    @Option(
        help: """
            Seconds between two checks of every connected user's peer address (a TCP connection \
            opened and closed at once); 0 turns the checks off.
            """)
    var peerCheckInterval: Double = 30

    @Option(help: "Checks in a row a peer must fail before its user goes offline.")
    var peerCheckFailures: Int = 3

    @Option(
        help: """
            Seconds between two keepalives on our clients' control connections; a client silent \
            for three goes offline (its connection closing takes it offline at once).
            """)
    var controlKeepalive: Double = 2

    @Option(help: "Control connections open at once; more clients are checked with probes instead.")
    var maxControlConnections: Int = 100_000

    @Option(
        help: """
            Relay transfers between users no connection can be made between (both behind NATs \
            that give every connection a new port), at most this many bytes per second for all \
            of them together: 10M, 500K, or a number of bytes. 0 (the default) relays nothing.
            """)
    var relayLimit: String = "0"

    @Option(help: "Bytes per second for one relayed transfer (default: all of --relay-limit).")
    var relayTransferLimit: String?

    @Option(help: "Relayed transfers at once; more are refused.")
    var relayMaxTransfers: Int = 8

    @Option(help: "Relayed transfers one user may take part in at once (as downloader or owner).")
    var relayMaxTransfersPerUser: Int = 2

    @Option(help: "Seconds a relayed transfer may pass no byte either way before it is closed.")
    var relayIdleTimeout: Double = 30

    @Option(help: "Control connections open at once from one address.")
    var maxControlConnectionsPerAddress: Int = 64

    @Option(help: "Port of the read-only web page, /metrics and /health (none when not given).")
    var httpPort: Int?

    @Option(help: "Address the web page listens on.")
    var httpHost: String = "127.0.0.1"

    @Option(help: "Host of rpcbind and the operation-log server (default: $LOG_RPC_IP, else localhost).")
    var rpcHost: String?

    @Flag(help: "Do not send operation records to the log server.")
    var noOplog = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0-65535") }
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be positive") }
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
        guard maxConnectionsPerAddress >= 0 else {
            throw ValidationError("--max-connections-per-address must be 0 or more")
        }
        if let threads, !(1...256).contains(threads) { throw ValidationError("--threads must be 1-256") }
        if let httpPort, !(0...65535).contains(httpPort) { throw ValidationError("--http-port must be 0-65535") }
        guard peerCheckInterval >= 0 else { throw ValidationError("--peer-check-interval must be 0 or more") }
        guard peerCheckFailures >= 1 else { throw ValidationError("--peer-check-failures must be at least 1") }
        guard controlKeepalive >= 0.05 else { throw ValidationError("--control-keepalive must be at least 0.05") }
        guard maxControlConnections >= 0 else { throw ValidationError("--max-control-connections must be 0 or more") }
        guard RelaySettings.parseRate(relayLimit) != nil else {
            throw ValidationError("--relay-limit must be a rate such as 10M, 500K or a number of bytes")
        }
        if let relayTransferLimit, (RelaySettings.parseRate(relayTransferLimit) ?? 0) <= 0 {
            throw ValidationError("--relay-transfer-limit must be a positive rate such as 2M")
        }
        guard relayMaxTransfers >= 0 else { throw ValidationError("--relay-max-transfers must be 0 or more") }
        guard relayMaxTransfersPerUser >= 1 else {
            throw ValidationError("--relay-max-transfers-per-user must be at least 1")
        }
        guard relayIdleTimeout >= 0.1 else { throw ValidationError("--relay-idle-timeout must be at least 0.1") }
        guard maxControlConnectionsPerAddress >= 1 else {
            throw ValidationError("--max-control-connections-per-address must be at least 1")
        }
        _ = try trustedProxies
        if let clusterAddress, DirectoryApplication.parseLinkAddress(clusterAddress) == nil {
            throw ValidationError(
                "--cluster-address must be HOST:PORT (an IPv6 address in brackets), not \(clusterAddress)")
        }
        if let store = storeText {
            do {
                _ = try DirectoryStoreLocation(parsing: store)
            } catch {
                throw ValidationError("\(store == self.store ? "--store" : "$P2P_STORE"): \(error)")
            }
        }
    }

    /// `--proxy-from`, parsed.
    var trustedProxies: [AddressPrefix] {
        get throws {
            let entries = proxyFrom.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard !entries.isEmpty else { throw ValidationError("--proxy-from needs at least one address") }
            return try entries.map { entry in
                guard let prefix = AddressPrefix(entry) else {
                    throw ValidationError("--proxy-from: \(entry) is not an IPv4 or IPv6 address (ADDR or ADDR/PREFIX)")
                }
                return prefix
            }
        }
    }

    /// `--store`, else `$P2P_STORE` when set and not empty.
    private var storeText: String? {
        store ?? ProcessInfo.processInfo.environment["P2P_STORE"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// `--store` or `$P2P_STORE`, else the SQLite file in `--data-dir`.
    var storeLocation: DirectoryStoreLocation {
        get throws {
            if let store = storeText { return try DirectoryStoreLocation(parsing: store) }
            return .sqlite(dataDirectory: dataDir)
        }
    }

    /// The number of event loops: `--threads`, else one less than the cores, at least 1.
    var eventLoopCount: Int {
        threads ?? max(1, System.coreCount - 1)
    }

    func run() async throws {
        try await serve()
    }

    /// Runs the server until SIGINT/SIGTERM. Called by main.swift, which first moves Swift
    /// concurrency onto NIO's event loops.
    func serve() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
        let logger = Logger(label: "p2p-server")
        raiseOpenFileLimit()

        let rpcHost = self.rpcHost ?? ProcessInfo.processInfo.environment["LOG_RPC_IP"] ?? "localhost"
        let operationLog = noOplog ? nil : RPCOperationLog(host: rpcHost, logger: Logger(label: "p2p-server.oplog"))
        let console = ConsoleWriter()
        let configuration = DirectoryServerConfiguration(
            host: host,
            port: port,
            codeEncoding: resultEncoding,
            idleTimeout: .milliseconds(Int64(idleTimeout * 1000)),
            maxConnections: maxConnections,
            maxConnectionsPerAddress: maxConnectionsPerAddress,
            ownerCheck: ownerCheck == .on,
            proxyProtocol: proxyProtocol,
            trustedProxies: try trustedProxies)

        // Metrics go to Prometheus' registry when the web side is on, nowhere otherwise.
        let registry = PrometheusCollectorRegistry()
        let factory = PrometheusMetricsFactory.directory(registry: registry)
        let metrics = httpPort == nil ? DirectoryMetrics.none : DirectoryMetrics(factory: factory)

        let application: DirectoryApplication
        do {
            application = try await DirectoryApplication.build(
                configuration: configuration, store: try storeLocation, operationLog: operationLog,
                peerChecks: PeerCheckSettings(
                    interval: .milliseconds(Int64(peerCheckInterval * 1000)), failuresToExpire: peerCheckFailures,
                    timeout: min(.seconds(2), .milliseconds(Int64(peerCheckInterval * 1000)))),
                control: ControlSettings(
                    keepalive: .milliseconds(Int64(controlKeepalive * 1000)), maxSessions: maxControlConnections,
                    maxSessionsPerAddress: maxControlConnectionsPerAddress),
                relay: RelaySettings(
                    bytesPerSecond: RelaySettings.parseRate(relayLimit) ?? 0,
                    perTransfer: relayTransferLimit.flatMap(RelaySettings.parseRate), maxTransfers: relayMaxTransfers,
                    maxTransfersPerUser: relayMaxTransfersPerUser,
                    idleTimeout: .milliseconds(Int64(relayIdleTimeout * 1000))),
                clusterAddress: clusterAddress, metrics: metrics, console: console.write, logger: logger)
        } catch {
            console.close()
            FileHandle.standardError.write(Data("p2p-server: \(error)\n".utf8))
            throw ExitCode(1)
        }
        let server = application.server
        let shownHost = server.localAddress.ipAddress ?? host
        say("s> init server \(DualStack.hostAndPort(shownHost, server.localAddress.port ?? port))")
        say("s> directory: \(application.storeLocation)")
        if let operationLog {
            say("s> operation log: rpc://\(operationLog.host)")
        }

        // Services stop in reverse order: the web side, the listener and the store first, then
        // the log drains what is left.
        var services: [any Service] = []
        if let operationLog { services.append(operationLog) }
        services.append(application)
        if let httpPort {
            let oplogMetrics = operationLog.map { OperationLogMetrics(log: $0, factory: factory) }
            let web = buildDirectoryWebApplication(
                DirectoryWebConfiguration(host: httpHost, port: httpPort), store: application.store,
                registry: registry,
                beforeScrape: { oplogMetrics?.update() },
                logger: Logger(label: "p2p-server.web"),
                onServerRunning: { channel in
                    say(
                        """
                        s> web page: \
                        http://\(DualStack.hostAndPort(httpHost, channel.localAddress?.port ?? httpPort))/
                        """
                    )
                })
            services.append(web)
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()

        console.close()
        if let operationLog {
            say("s> operation log: \(operationLog.currentStatistics)")
        }
        say("s> server stopped")
    }
}

/// Writes one line to stdout at once, unbuffered, so that lines from many connections never
/// interleave and show up immediately when stdout is a pipe.
@Sendable private func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Many clients at once need many descriptors: use the hard limit rather than the soft one.
private func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(openFileLimitResource, &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(openFileLimitResource, &limit)
}

#if canImport(Glibc)
    import Glibc
    private let openFileLimitResource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
#else
    private let openFileLimitResource = RLIMIT_NOFILE
#endif

/// The operation-log sender's figures in `/metrics`, brought up to date before each scrape:
/// the queue as a gauge, and what it delivered, retried and dropped as counters (they only
/// grow: a counter's rate is what a dashboard wants).
final class OperationLogMetrics: Sendable {
    private let log: RPCOperationLog
    private let queued: CoreMetrics.Gauge
    private let delivered: CoreMetrics.Counter
    private let retried: CoreMetrics.Counter
    private let dropped: CoreMetrics.Counter
    /// What the counters have been told so far: (delivered, retried, dropped).
    private let reported = Mutex<(Int, Int, Int)>((0, 0, 0))

    init(log: RPCOperationLog, factory: any MetricsFactory) {
        self.log = log
        queued = CoreMetrics.Gauge(label: "p2p_oplog_queued_records", factory: factory)
        delivered = CoreMetrics.Counter(label: "p2p_oplog_delivered_records_total", factory: factory)
        retried = CoreMetrics.Counter(label: "p2p_oplog_retried_calls_total", factory: factory)
        dropped = CoreMetrics.Counter(label: "p2p_oplog_dropped_records_total", factory: factory)
    }

    func update() {
        let statistics = log.currentStatistics
        queued.record(statistics.pending)
        let (newDelivered, newRetried, newDropped) = reported.withLock { reported in
            let before = reported
            reported = (
                max(before.0, statistics.delivered), max(before.1, statistics.retries),
                max(before.2, statistics.dropped)
            )
            return (reported.0 - before.0, reported.1 - before.1, reported.2 - before.2)
        }
        if newDelivered > 0 { delivered.increment(by: Int64(newDelivered)) }
        if newRetried > 0 { retried.increment(by: Int64(newRetried)) }
        if newDropped > 0 { dropped.increment(by: Int64(newDropped)) }
    }
}
