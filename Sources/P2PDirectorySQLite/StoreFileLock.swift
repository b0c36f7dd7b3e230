import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One process at a time per database file: an exclusive `flock` on `<database>.lock`, held
/// from before the store opens the file until it has closed it.
///
/// The SQLite store assumes it is the only writer of its file: the search bitmaps learn changes
/// from its own writer, and the remembered LIST replies are forgotten only by its own journal.
/// A second server on the same data folder would make both silently wrong, so it is refused
/// with the first one's process id instead.
///
/// A separate file, not the database: SQLite locks the database with POSIX record locks, which
/// a process loses when it closes any descriptor of that file, and NFS emulates `flock` with
/// the same record locks. The lock file stays in place after a stop (removing it would let a
/// starting process lock a file that another one is about to unlink).
final class StoreFileLock: Sendable {
    private let descriptor: Mutex<Int32?>

    /// Takes the lock for the database at `databasePath`, or throws
    /// ``SQLiteDirectoryStoreError/inUse(path:byProcess:)`` when another descriptor holds it.
    init(databasePath: String) throws(SQLiteDirectoryStoreError) {
        // Beside the file itself, whatever name it was reached by (a symbolic link to it, a
        // relative path): two names of one database must not give two locks.
        let path = Self.canonical(databasePath) + ".lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .cannotLock(path: path, reason: String(cString: strerror(errno))) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let failure = errno
            let holder = Self.recordedProcess(fd)
            close(fd)
            if failure == EWOULDBLOCK { throw .inUse(path: databasePath, byProcess: holder) }
            throw .cannotLock(path: path, reason: String(cString: strerror(failure)))
        }
        // Who holds it, for the message the next process prints; the lock itself is the flock.
        let pid = Array("\(getpid())\n".utf8)
        if ftruncate(fd, 0) == 0 {
            _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        }
        descriptor = Mutex(fd)
    }

    /// Lets the next process open the database. Idempotent.
    func release() {
        descriptor.withLock { fd in
            if let open = fd { close(open) }
            fd = nil
        }
    }

    deinit {
        release()
    }

    /// `path` with every symbolic link resolved: the file's own real path when it exists, else
    /// its folder's (the store creates the folder first) and its name.
    static func canonical(_ path: String) -> String {
        func real(_ path: String) -> String? {
            guard let resolved = realpath(path, nil) else { return nil }
            defer { free(resolved) }
            return String(cString: resolved)
        }
        if let file = real(path) { return file }
        let folder = (path as NSString).deletingLastPathComponent
        let name = (path as NSString).lastPathComponent
        guard let realFolder = real(folder.isEmpty ? "." : folder) else { return path }
        return (realFolder as NSString).appendingPathComponent(name)
    }

    /// The process id the holder wrote into the lock file, if it is readable.
    private static func recordedProcess(_ fd: Int32) -> Int32? {
        var bytes = [UInt8](repeating: 0, count: 32)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        let text = String(decoding: bytes[..<count], as: UTF8.self)
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// Why the SQLite store could not be opened, beyond what SQLite itself reports.
public enum SQLiteDirectoryStoreError: Error, CustomStringConvertible, Equatable {
    /// Another process (or another store in this one) has the database open.
    case inUse(path: String, byProcess: Int32?)
    /// The lock file could not be created or locked (a read-only folder, say).
    case cannotLock(path: String, reason: String)

    public var description: String {
        switch self {
        case .inUse(let path, let process):
            let holder = process.map { "process \($0)" } ?? "another process"
            return "\(path) is in use by \(holder) (another p2p-server on the same data folder?); stop it first"
        case .cannotLock(let path, let reason):
            return "cannot lock \(path): \(reason)"
        }
    }
}
