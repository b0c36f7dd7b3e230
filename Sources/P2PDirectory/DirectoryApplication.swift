import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import P2POperationLog
import P2PProtocol
import ServiceLifecycle

/// One directory server, assembled: the store, the request handler and the listener. Built by
/// ``build(configuration:store:operationLog:console:logger:eventLoopGroup:)``, the one place
/// that puts a server together, for `p2p-server` and for the tests alike.
///
/// As a `Service` it serves until graceful shutdown, lets the requests in flight finish and
/// then closes the store.
public final class DirectoryApplication: Service, Sendable {
    public let store: any DirectoryStore
    public let server: DirectoryServer
    public let storeLocation: any DirectoryStoreOpener
    /// Checks connected users' peers and expires the dead ones; nil when off.
    public let peerChecker: PeerChecker?
    /// Our clients' control connections.
    public let controls: ControlSessions

    private init(
        store: any DirectoryStore, server: DirectoryServer, storeLocation: any DirectoryStoreOpener,
        peerChecker: PeerChecker?, controls: ControlSessions
    ) {
        self.store = store
        self.server = server
        self.storeLocation = storeLocation
        self.peerChecker = peerChecker
        self.controls = controls
    }

    /// Opens the store at `location` and binds the listener.
    /// - Parameters:
    ///   - operationLog: receives one record per request; nil for none.
    ///   - peerChecks: how dead peers are found and expired; nil (or a zero interval) for never.
    ///   - metrics: where the server's metrics go (none by default).
    ///   - console: receives one line per request (`s> REGISTER FROM alice`).
    public static func build(
        configuration: DirectoryServerConfiguration,
        store location: any DirectoryStoreOpener,
        operationLog: (any OperationLogSink)?,
        peerChecks: PeerCheckSettings? = nil,
        control: ControlSettings = ControlSettings(),
        relay: RelaySettings = RelaySettings(),
        clusterAddress: String? = nil,
        metrics: DirectoryMetrics = .none,
        console: @escaping @Sendable (String) -> Void,
        logger: Logger,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws(DirectoryApplicationError) -> DirectoryApplication {
        let store: any DirectoryStore
        do {
            store = try await location.open(logger: logger, metrics: metrics)
        } catch {
            throw .cannotOpenStore(location, error)
        }
        // Behind a load balancer a hole punch takes the client's port from the PROXY header; a
        // punch's and a relay's sides are paired by the server that made them (or where a
        // relay's first side waits) whichever servers they reach.
        let handler = DirectoryRequestHandler(
            operationLog: operationLog, ownerCheck: configuration.ownerCheck,
            capabilities: [ServerCapabilities.control, ServerCapabilities.punch]
                + (relay.isEnabled ? [ServerCapabilities.relay] : []) + [ServerCapabilities.identity],
            console: console)
        // Keyed sessions are sealed with the directory's secret: any server sharing it verifies them.
        let secret: SymmetricKey
        do {
            guard let bytes = Data(base64Encoded: try await store.sessionSecret()), bytes.count == 32 else {
                throw SessionSecretMalformed()
            }
            secret = SymmetricKey(data: bytes)
        } catch {
            try? await store.close()
            throw .cannotOpenStore(location, error)
        }
        let controls = ControlSessions(
            settings: control, store: store, operationLog: operationLog, relay: relay, metrics: metrics,
            sessionSecret: secret, console: console, logger: logger, timers: eventLoopGroup.any())
        do {
            let server = try await DirectoryServer.bind(
                configuration: configuration, handler: handler, store: store, metrics: metrics, controls: controls,
                logger: logger, eventLoopGroup: eventLoopGroup)
            controls.listening(at: clusterAddress ?? Self.linkAddress(of: server.localAddress))
            let checker = peerChecks.flatMap { settings in
                settings.isEnabled
                    ? PeerChecker(
                        store: store, settings: settings, operationLog: operationLog, controls: controls,
                        console: console, logger: logger)
                    : nil
            }
            return DirectoryApplication(
                store: store, server: server, storeLocation: location, peerChecker: checker, controls: controls)
        } catch {
            try? await store.close()
            throw .cannotListen(host: configuration.host, port: configuration.port, error)
        }
    }

    /// Where the other servers sharing the directory reach this one: the address it listens
    /// on, or 127.0.0.1 (::1) when it listens on every address (the servers on one machine).
    static func linkAddress(of address: SocketAddress) -> String {
        let port = address.port ?? 0
        switch address.ipAddress {
        case nil, "0.0.0.0": return "127.0.0.1:\(port)"
        case "::": return "[::1]:\(port)"
        case let ip? where ip.contains(":"): return "[\(ip)]:\(port)"
        case let ip?: return "\(ip):\(port)"
        }
    }

    /// `HOST:PORT` or `[IPv6]:PORT` (a ``linkAddress(of:)`` or a `--cluster-address`): the host
    /// and the port; nil for anything else.
    public static func parseLinkAddress(_ text: String) -> (host: String, port: Int)? {
        guard let separator = text.lastIndex(of: ":"), let port = Int(text[text.index(after: separator)...]),
            (1...65535).contains(port)
        else { return nil }
        var host = Substring(text[..<separator])
        if host.hasPrefix("[") {
            guard host.hasSuffix("]") else { return nil }
            host = host.dropFirst().dropLast()
        } else if host.contains(":") {
            return nil
        }
        guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "/" }) else { return nil }
        return (String(host), port)
    }

    /// Serves (and checks peers) until graceful shutdown (or ``DirectoryServer/stop()``), then
    /// closes the store.
    public func run() async throws {
        let served: Result<Void, any Error> = await withTaskGroup(of: Void.self) { group in
            if let peerChecker {
                group.addTask { try? await peerChecker.run() }
            }
            let controls = self.controls
            group.addTask { await controls.renewLeases() }
            group.addTask { await controls.receiveForwarded() }
            group.addTask { await controls.shareRelayLoad() }
            let served: Result<Void, any Error>
            do {
                try await server.run()
                served = .success(())
            } catch {
                served = .failure(error)
            }
            group.cancelAll()
            return served
        }
        do {
            try served.get()
        } catch {
            try? await store.close()
            throw error
        }
        try await store.close()
    }
}

/// Why a directory server could not be built.
public enum DirectoryApplicationError: Error, CustomStringConvertible {
    case cannotOpenStore(any DirectoryStoreOpener, any Error)
    case cannotListen(host: String, port: Int, any Error)

    public var description: String {
        switch self {
        case .cannotOpenStore(let location, let error):
            return "cannot open the directory at \(location): \(error)"
        case .cannotListen(let host, let port, let error):
            return "cannot listen on \(host):\(port): \(error)"
        }
    }
}

/// The secret a directory keeps for its keyed sessions is not 32 bytes of base64.
struct SessionSecretMalformed: Error, CustomStringConvertible {
    var description: String { "the directory's secret for keyed sessions is malformed" }
}
