import Foundation
import P2PNetworkSupport
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A change under a followed folder, as far as sharing cares.
enum FolderEvent: Sendable, Equatable {
    /// A file appeared, was renamed, was written or went away directly in this folder.
    case filesChanged(folder: String)
    /// A folder appeared (created or moved in) at this path.
    case folderAdded(String)
    /// A folder went away (removed or moved out) from this path.
    case folderRemoved(String)
    /// The kernel dropped events: everything must be looked at again.
    case overflow
}

/// Follows folders with inotify (through Glibc; no Swift package for it is available here) on
/// a thread of its own, and hands over the changes in batches: a batch ends once the folders
/// have been quiet for 100 ms, or 500 ms after its first change, so that a burst (a folder of
/// photos copied in) becomes one batch and a single change arrives within half a second.
/// Nothing is polled: the thread sleeps in `poll` until the kernel reports a change.
final class FolderWatcher: Sendable {
    private let descriptor: Int32
    /// inotify's watch descriptors and the folder each stands for.
    private let folders = Mutex<[Int32: String]>([:])
    private let stopped = Atomic<Bool>(false)
    private let finished = Mutex<CheckedContinuation<Void, Never>?>(nil)
    private let done = Atomic<Bool>(false)

    /// The batches of changes, in order.
    let changes: AsyncStream<[FolderEvent]>
    private let continuation: AsyncStream<[FolderEvent]>.Continuation

    struct CannotWatch: Error, CustomStringConvertible {
        var reason: String
        var description: String { "cannot follow folders: \(reason)" }
    }

    init() throws {
        descriptor = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard descriptor >= 0 else { throw CannotWatch(reason: String(cString: strerror(errno))) }
        (changes, continuation) = AsyncStream.makeStream(of: [FolderEvent].self)
        WorkerThread.start(named: "p2p-folder-watch") { [self] in readLoop() }
    }

    private static let mask: UInt32 =
        UInt32(IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_ONLYDIR)
        | UInt32(IN_EXCL_UNLINK)

    /// Starts following `folder` (not its subfolders: watch each). Nil when it worked, else why
    /// not (the system's limit of inotify watches, say).
    func watch(_ folder: String) -> String? {
        let watch = inotify_add_watch(descriptor, folder, Self.mask)
        guard watch >= 0 else {
            return errno == ENOSPC
                ? "the system's limit of followed folders (fs.inotify.max_user_watches) is reached"
                : String(cString: strerror(errno))
        }
        folders.withLock { $0[watch] = folder }
        return nil
    }

    /// Stops following `folder` and every folder under it.
    func unwatch(under folder: String) {
        let removed = folders.withLock { folders in
            let gone = folders.filter { $0.value == folder || $0.value.hasPrefix(folder + "/") }.map(\.key)
            for watch in gone { folders[watch] = nil }
            return gone
        }
        for watch in removed { inotify_rm_watch(descriptor, watch) }
    }

    /// Stops the thread and closes the inotify descriptor; the stream ends.
    func stop() async {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        await withCheckedContinuation { (wait: CheckedContinuation<Void, Never>) in
            let resumeNow = finished.withLock { slot -> Bool in
                if done.load(ordering: .relaxed) { return true }
                slot = wait
                return false
            }
            if resumeNow { wait.resume() }
        }
    }

    private func readLoop() {
        var batch: [FolderEvent] = []
        var batchStarted: ContinuousClock.Instant?
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !stopped.load(ordering: .relaxed) {
            var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            // Quiet folders: sleep until a change (waking now and then to see whether to stop).
            let wait: Int32 = batch.isEmpty ? 200 : 100
            let ready = poll(&entry, 1, wait)
            if ready > 0 {
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress!, $0.count) }
                if count > 0 {
                    batch += decode(buffer, count: count)
                    if batchStarted == nil && !batch.isEmpty { batchStarted = .now }
                }
            }
            let quiet = ready == 0
            if let started = batchStarted, quiet || ContinuousClock.now - started > .milliseconds(500) {
                continuation.yield(batch)
                batch = []
                batchStarted = nil
            }
        }
        close(descriptor)
        continuation.finish()
        let waiting = finished.withLock { slot -> CheckedContinuation<Void, Never>? in
            done.store(true, ordering: .relaxed)
            defer { slot = nil }
            return slot
        }
        waiting?.resume()
    }

    /// Turns raw inotify records into folder events.
    private func decode(_ buffer: [UInt8], count: Int) -> [FolderEvent] {
        var events: [FolderEvent] = []
        var offset = 0
        let header = MemoryLayout<inotify_event>.size
        buffer.withUnsafeBytes { raw in
            while offset + header <= count {
                let watch = raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)
                let mask = raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
                let length = Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                let nameBytes = raw[(offset + header)..<min(count, offset + header + length)].prefix { $0 != 0 }
                offset += header + length
                if mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    events.append(.overflow)
                    continue
                }
                if mask & UInt32(IN_IGNORED) != 0 {
                    // The folder itself went away (its parent reports it) or was unwatched.
                    folders.withLock { _ = $0.removeValue(forKey: watch) }
                    continue
                }
                guard let folder = folders.withLock({ $0[watch] }) else { continue }
                let name = String(decoding: nameBytes, as: UTF8.self)
                let path = folder + "/" + name
                if mask & UInt32(IN_ISDIR) != 0 {
                    if mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 { events.append(.folderAdded(path)) }
                    if mask & UInt32(IN_DELETE | IN_MOVED_FROM) != 0 { events.append(.folderRemoved(path)) }
                } else if events.last != .filesChanged(folder: folder) {
                    events.append(.filesChanged(folder: folder))
                }
            }
        }
        return events
    }
}
