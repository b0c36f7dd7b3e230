import P2PDirectory
import Dispatch
import GRDB
import Synchronization

/// Keeps the directory's write-ahead log short without making a commit pay for it.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses the threshold: that commit
/// copies every page of the log into the database file and syncs it, and every request waiting
/// on it waits a few milliseconds more (the slowest one percent of writes in `make bench`).
/// The writer therefore has automatic checkpoints off, and this type copies the log from its
/// own connection and thread with PASSIVE checkpoints, which never block the writer.
///
/// SQLite starts the log over from its beginning only when a write transaction begins with
/// every frame already copied, which under steady writes a checkpoint from another connection
/// rarely catches. When the log has grown past ``Settings/restartFrames`` the checkpointer therefore
/// asks the writer (``takeRestartRequest()``) to run one more PASSIVE checkpoint itself, between
/// two batches: by then almost everything is copied, so it is short, and the next commit starts
/// the log over.
final class WALCheckpointer: Sendable {
    struct Settings: Sendable {
        /// How often to checkpoint while there are new commits.
        var interval: DispatchTimeInterval = .milliseconds(100)
        /// Log frames (pages) after which the writer is asked to finish a checkpoint. At 4000
        /// (16 MiB of 4 KiB pages) the writer does so about once a second under full load.
        var restartFrames = 4000
    }

    private let restartFrames: Int
    private let connection: DatabaseQueue
    private let queue = DispatchQueue(label: "p2p.directory.checkpoint", qos: .utility)
    // Dispatch sources are thread-safe; the type is just not annotated Sendable.
    private nonisolated(unsafe) let timer: any DispatchSourceTimer
    /// Commits since the last checkpoint; the timer does nothing while it is 0.
    private let commits = Atomic<Int>(0)
    private let restartRequested = Atomic<Bool>(false)

    /// Opens a connection of its own to the database at `path` (already in WAL mode) and
    /// checkpoints every `settings.interval` while there are new commits.
    init(path: String, settings: Settings = Settings()) throws {
        restartFrames = settings.restartFrames
        let interval = settings.interval
        var configuration = Configuration()
        configuration.label = "checkpointer"
        configuration.prepareDatabase { db in
            // The checkpoint syncs the database file before it lets the log be reused.
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        connection = try DatabaseQueue(path: path, configuration: configuration)
        timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + interval, repeating: interval, leeway: .milliseconds(20))
        timer.setEventHandler { [weak self] in self?.checkpointIfNeeded() }
        timer.activate()
    }

    deinit {
        // An active dispatch source is kept alive by Dispatch itself until cancelled.
        timer.cancel()
    }

    /// Called by the writer after each commit.
    func didCommit() {
        commits.add(1, ordering: .relaxed)
    }

    /// True once after the log grew past ``Settings/restartFrames``: the writer should then run a
    /// PASSIVE checkpoint on its own connection.
    func takeRestartRequest() -> Bool {
        restartRequested.exchange(false, ordering: .relaxed)
    }

    /// Stops the timer and waits for a checkpoint in progress.
    func close() throws {
        timer.cancel()
        queue.sync {}
        try connection.close()
    }

    private func checkpointIfNeeded() {
        guard commits.exchange(0, ordering: .relaxed) > 0 else { return }
        // A failure (the database busy with a RESTART elsewhere, say) only delays the copy:
        // the log keeps every committed change until a later checkpoint succeeds.
        guard let result = try? connection.writeWithoutTransaction({ db in try db.checkpoint(.passive) }) else {
            return
        }
        if result.walFrameCount >= restartFrames {
            restartRequested.store(true, ordering: .relaxed)
        }
    }
}
