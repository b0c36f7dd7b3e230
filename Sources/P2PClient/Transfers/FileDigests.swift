import Crypto
import Foundation
import NIOPosix
import Synchronization
import P2PNetworkSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The SHA-256 of the files this peer serves, computed once per file and kept while its size
/// and modification time stay the same. Several downloads asking for the digest of a file
/// being hashed wait for that one hashing, never start another: no download waits longer than
/// the hashing itself takes.
actor FileDigests {
    private struct Version: Hashable {
        var path: String
        var size: Int64
        var modified: Int64
        var inode: UInt64
    }

    private var known: [String: (version: Version, digest: String)] = [:]
    private var running: [Version: Task<String, any Error>] = [:]

    /// The digest of the file open at `descriptor` (opened from `path`).
    func digest(path: String, descriptor: Int32) async throws -> String {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw DigestError.unreadable(path) }
        let version = Version(
            path: path, size: Int64(info.st_size),
            modified: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
            inode: UInt64(info.st_ino))
        if let entry = known[path], entry.version == version { return entry.digest }
        if let task = running[version] { return try await task.value }
        // Its own descriptor: the caller closes its one when the request is done.
        let copy = dup(descriptor)
        guard copy >= 0 else { throw DigestError.unreadable(path) }
        let task = Task {
            defer { close(copy) }
            return try await BlockingWork.run { try Self.sha256(of: copy, path: path) }
        }
        running[version] = task
        defer { running[version] = nil }
        let digest = try await task.value
        known[path] = (version, digest)
        return digest
    }

    enum DigestError: Error, CustomStringConvertible {
        case unreadable(String)
        var description: String {
            switch self {
            case .unreadable(let path): return "cannot read \(path) to compute its digest"
            }
        }
    }

    /// Hex SHA-256 of everything readable from `descriptor`, from its start. Blocking.
    static func sha256(of descriptor: Int32, path: String) throws -> String {
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset: off_t = 0
        while true {
            let count = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress!, $0.count, offset) }
            if count < 0 {
                if errno == EINTR { continue }
                throw DigestError.unreadable(path)
            }
            if count == 0 { break }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            offset += off_t(count)
        }
        return hex(hasher.finalize())
    }

    static func hex<D: Sequence<UInt8>>(_ digest: D) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in digest {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}

/// Caps this peer's upload rate for all downloads together: each slice of a file waits its
/// turn on one schedule, so N downloads share the rate instead of each getting it.
final class UploadLimiter: Sendable {
    let bytesPerSecond: Int
    private let nextFree = Mutex<ContinuousClock.Instant>(.now)

    init(bytesPerSecond: Int) {
        self.bytesPerSecond = bytesPerSecond
    }

    /// Reserves `bytes` on the schedule; returns when they may be sent.
    func reserve(_ bytes: Int) -> ContinuousClock.Instant {
        let cost = Duration.nanoseconds(Int64(Double(bytes) / Double(bytesPerSecond) * 1e9))
        return nextFree.withLock { next in
            let start = max(next, .now)
            next = start + cost
            return start
        }
    }
}
