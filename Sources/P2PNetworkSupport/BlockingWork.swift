import Foundation
import NIOPosix

/// Work that blocks (a file opened or hashed, a database read, a schema migration), called
/// from async code. Nothing that blocks runs on an event loop or in the cooperative pool: this
/// is the one way this codebase takes such work off them, on NIO's shared thread pool
/// (`NIOThreadPool.singleton`, the pool `NonBlockingFileIO` uses too). For work that blocks for
/// long or for good (a terminal's line, a round of peer checks, a loop on a descriptor), a pool
/// thread would be held from everybody else's files: that takes a ``WorkerThread``.
public enum BlockingWork {
    /// Runs `body` on the shared thread pool and returns what it returns (or throws what it
    /// throws; `CancellationError` when the pool is shutting down).
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(body)
    }
}

/// A thread of its own, named for `top -H` and debuggers: the one way this codebase runs a
/// long-lived worker (a loop that waits on a descriptor or a condition for the program's life)
/// or one long blocking wait awaited from async code.
public enum WorkerThread {
    /// Starts `body` on a new thread called `name`.
    public static func start(named name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.name = name
        thread.start()
    }

    /// Runs `body` on a new thread called `name` and returns its result once it is done.
    public static func run<T: Sendable>(named name: String, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            start(named: name) { continuation.resume(returning: body()) }
        }
    }
}
