// The path floor for `make bench`: the directory server's own request path (listener, limits,
// connection state machine, decoder, request handler, store batcher, console lines) over the
// in-memory reference store instead of a durable one, set up as `p2p-server` sets itself up
// (event loops, Swift concurrency on them, no operation log, no peer checks). Between the NIO
// floor and this is what our path costs; between this and the server, what the store costs.
// Nothing it is told is kept: it is a measuring stick, never a directory.
//
// usage: path-floor PORT   (prints "listening <port>" once ready; PORT 0 picks a free one)
import Logging
import NIOCore
import NIOPosix
import P2PDirectory

/// Opens the rules' in-memory reference store (``InMemoryDirectoryStore``).
struct InMemoryStoreOpener: DirectoryStoreOpener {
    var description: String { "memory (nothing kept)" }

    func open(logger: Logger, metrics: DirectoryMetrics) async throws -> any DirectoryStore {
        InMemoryDirectoryStore()
    }
}

let port = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 0 : 0
// As p2p-server's main.swift: one event loop less than the cores, tasks run on the loops.
NIOSingletons.groupLoopCountSuggestion = max(1, System.coreCount - 1)
NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
let console = ConsoleWriter()
let application = try await DirectoryApplication.build(
    configuration: DirectoryServerConfiguration(host: "127.0.0.1", port: port), store: InMemoryStoreOpener(),
    operationLog: nil, console: console.write, logger: Logger(label: "path-floor"))
print("listening \(application.server.localAddress.port ?? 0)")
try await application.run()
