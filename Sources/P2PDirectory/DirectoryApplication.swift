import Foundation
import Logging
import NIOCore
import NIOPosix
import P2POperationLog
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
    public let storeLocation: DirectoryStoreLocation

    private init(store: any DirectoryStore, server: DirectoryServer, storeLocation: DirectoryStoreLocation) {
        self.store = store
        self.server = server
        self.storeLocation = storeLocation
    }

    /// Opens the store at `location` and binds the listener.
    /// - Parameters:
    ///   - operationLog: receives one record per request; nil for none.
    ///   - console: receives one line per request (`s> REGISTER FROM alice`).
    public static func build(
        configuration: DirectoryServerConfiguration,
        store location: DirectoryStoreLocation,
        operationLog: (any OperationLogSink)?,
        console: @escaping @Sendable (String) -> Void,
        logger: Logger,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws(DirectoryApplicationError) -> DirectoryApplication {
        let store: any DirectoryStore
        do {
            store = try await location.open(logger: logger)
        } catch {
            throw .cannotOpenStore(location, error)
        }
        let handler = DirectoryRequestHandler(operationLog: operationLog, console: console)
        do {
            let server = try await DirectoryServer.bind(
                configuration: configuration, handler: handler, store: store, logger: logger,
                eventLoopGroup: eventLoopGroup)
            return DirectoryApplication(store: store, server: server, storeLocation: location)
        } catch {
            try? await store.close()
            throw .cannotListen(host: configuration.host, port: configuration.port, error)
        }
    }

    /// Serves until graceful shutdown (or ``DirectoryServer/stop()``), then closes the store.
    public func run() async throws {
        do {
            try await server.run()
        } catch {
            try? await store.close()
            throw error
        }
        try await store.close()
    }
}

/// Why a directory server could not be built.
public enum DirectoryApplicationError: Error, CustomStringConvertible {
    case cannotOpenStore(DirectoryStoreLocation, any Error)
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
