import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

do {
    var parsed = try ServerCommand.parseAsRoot()
    guard let command = parsed as? ServeCommand else {
        // copy-directory, --help, --version: nothing that needs the event loops set up.
        if let copy = parsed as? CopyDirectoryCommand {
            try await copy.run()
        } else if let unbind = parsed as? UnbindCommand {
            try await unbind.run()
        } else {
            try parsed.run()
        }
        exit(0)
    }
    // The event loops are NIO's singleton group; its size must be chosen before first use.
    NIOSingletons.groupLoopCountSuggestion = command.eventLoopCount
    // Run Swift concurrency on NIO's event loops: a connection's task then continues on the
    // loop that did its I/O instead of hopping to another pool and back for every read and
    // write. Nothing blocking runs in tasks here (SQLite has its writer queue, RPC its sender
    // thread). Must happen before any task is enqueued, so before the first `await`.
    NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    try await command.serve()
} catch {
    ServerCommand.exit(withError: error)
}
