import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a peer may download (PROTOCOL.md section 4): regular files inside the share folder,
/// and the files this user published under that exact name in this session. Everything else
/// (a name with `..`, an absolute path elsewhere, a symlink leading out of the folder, a
/// directory, a device, a FIFO) is "no such file".
public final class SharedFolder: Sendable {
    /// The share folder, symlinks resolved.
    public let root: String
    private let published = Mutex<Set<String>>([])

    public init(path: String) throws {
        guard let resolved = Self.realPath(path) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: path])
        }
        root = resolved
    }

    /// Records that this user published `name` (served by that exact name from now on).
    public func publish(_ name: String) { _ = published.withLock { $0.insert(name) } }

    public func unpublish(_ name: String) { _ = published.withLock { $0.remove(name) } }

    public func unpublishAll() { published.withLock { $0.removeAll() } }

    /// The path to serve for `name`, or nil when it must be refused.
    public func resolve(_ name: String) -> String? {
        guard !name.isEmpty, !name.utf8.contains(0) else { return nil }
        if published.withLock({ $0.contains(name) }) {
            return name.hasPrefix("/") ? name : "\(root)/\(name)"
        }
        guard !name.hasPrefix("/") else { return nil }
        guard !name.split(separator: "/").contains("..") else { return nil }
        // Resolve symlinks and make sure the file is still inside the folder.
        guard let resolved = Self.realPath("\(root)/\(name)"), resolved.hasPrefix(root == "/" ? "/" : root + "/")
        else { return nil }
        return resolved
    }

    /// Opens `name` for reading if it may be served and is a regular file: the descriptor and
    /// its size. The check is made on the opened descriptor, so the file cannot be swapped
    /// between check and use. Blocking: call it off the event loops.
    public func open(_ name: String) -> (descriptor: Int32, size: Int)? {
        guard let path = resolve(name) else { return nil }
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        let descriptor = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard descriptor >= 0 else { return nil }
        var info = stat()
        guard fstat(descriptor, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            close(descriptor)
            return nil
        }
        return (descriptor, Int(info.st_size))
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
