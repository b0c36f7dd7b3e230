import NIOCore
import NIOPosix

// Run Swift concurrency on NIO's event loops: a connection's task then continues on the loop
// that did its I/O instead of hopping to another pool and back for every read and write.
// Nothing blocking runs in tasks here (SQLite has its writer queue, RPC its sender thread).
// Must happen first, on the main thread, before any task is enqueued.
NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()

do {
    let command = try ServerCommand.parse()
    try await command.serve()
} catch {
    ServerCommand.exit(withError: error)
}
