import ArgumentParser
import Hummingbird
import Logging
import NIOCore
import P2PTimeServer

#if canImport(Glibc)
    import Glibc
#endif

@main
struct TimeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2p-time",
        abstract: "The time service of the P2P system: SOAP get_time (zeep-compatible) and GET /time.",
        discussion: "Serves the WSDL at GET /?wsdl, SOAP 1.1 at POST /, plain text at GET /time, GET /health.")

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(name: .shortAndLong, help: "TCP port to listen on.")
    var port = 8000

    @Flag(help: "Log one line per request: method, path, status and time taken.")
    var accessLog = false

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardOutput(label: label)
            handler.logLevel = .info
            return handler
        }
        let logger = Logger(label: "p2p-time")
        let app = buildApplication(
            TimeServiceConfiguration(host: host, port: port, accessLog: accessLog), logger: logger)
        // runService handles SIGINT/SIGTERM with a graceful shutdown.
        do {
            try await app.runService()
        } catch let error as IOError {
            // NIO names the system call; a person wants the address.
            logger.error("cannot listen on \(host):\(port): \(String(cString: strerror(error.errnoCode)))")
            throw ExitCode.failure
        }
    }
}
