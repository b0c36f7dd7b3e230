import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a peer may download (PROTOCOL.md section 4): the files this client itself published
/// for the connected user, and nothing else. A name is served only while it is in the
/// published set, filled by PUBLISH and SHARE in this run and, from the ``PublishedRecord`` on
/// disk, in earlier ones: never from the directory's list of the user's files, which anyone
/// may have added to while she was offline. A relative name is looked up inside the share
/// folder (no `..`, no hidden part, no symlink leading out); an absolute name only as the exact
/// path it was published as. Either way only a regular file is served: anything else (a
/// directory, a device, a FIFO) is "no such file", as is every name that was not published.
public final class SharedFolder: Sendable {
    /// The share folder, symlinks resolved.
    public let root: String

    private struct Served {
        var names: Set<String> = []
        /// Where the names are recorded while a user is connected.
        var record: PublishedRecord?
    }

    private let served = Mutex(Served())

    public init(path: String) throws {
        guard let resolved = Self.realPath(path) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: path])
        }
        root = resolved
    }

    /// Records that this user published `name` (served by that exact name from now on).
    public func publish(_ name: String) { publish(contentsOf: CollectionOfOne(name)) }

    /// Records several published names at once.
    public func publish<Names: Sequence<String>>(contentsOf names: Names) {
        served.withLock { served in
            let names = Array(names)
            served.names.formUnion(names)
            served.record?.insert(names)
        }
    }

    public func unpublish(_ name: String) {
        served.withLock { served in
            served.names.remove(name)
            served.record?.remove(CollectionOfOne(name))
        }
    }

    /// Serves `record`'s names, and records every PUBLISH and DELETE there, until
    /// ``unpublishAll()``.
    public func attach(_ record: PublishedRecord?) {
        served.withLock { served in
            served.record = record
            served.names = record?.names ?? []
        }
    }

    /// Serves nothing (the user went offline); the record on disk stays as it is.
    public func unpublishAll() {
        served.withLock { served in
            served.names.removeAll()
            served.record = nil
        }
    }

    /// Whether `name` is served (published by this user).
    public func isPublished(_ name: String) -> Bool { served.withLock { $0.names.contains(name) } }

    /// How many names are served.
    public var publishedCount: Int { served.withLock { $0.names.count } }

    /// The path to serve for `name`, or nil when it must be refused: not published, or a
    /// relative name with a hidden part (which SHARE never publishes either).
    public func resolve(_ name: String) -> String? {
        guard !name.isEmpty, !name.utf8.contains(0), isPublished(name), !Self.hasHiddenPart(name) else { return nil }
        return location(of: name)
    }

    /// Whether a relative name has a part starting with a dot (`.ssh/id_ed25519`, `..`).
    static func hasHiddenPart(_ name: String) -> Bool {
        !name.hasPrefix("/") && name.split(separator: "/").contains { $0.hasPrefix(".") }
    }

    /// Where the file a name stands for is, whether published or not: the absolute path for an
    /// absolute name, else the path inside the share folder with symlinks resolved; nil when
    /// the name leads out of the folder (`..`, a symlink) or nothing is there.
    public func location(of name: String) -> String? {
        if name.hasPrefix("/") { return name }
        guard !name.split(separator: "/").contains("..") else { return nil }
        // Resolve symlinks and make sure the file is still inside the folder.
        guard let resolved = Self.realPath("\(root)/\(name)"), resolved.hasPrefix(root == "/" ? "/" : root + "/")
        else { return nil }
        return resolved
    }

    /// Whether a regular file stands at `name` (published or not).
    public func hasRegularFile(_ name: String) -> Bool {
        guard let path = location(of: name) else { return false }
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
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
