import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The names this client published for one user on one directory server, kept on disk across
/// runs: what its file server may serve. The directory's own list of the user's files is never
/// trusted for that, because anyone can PUBLISH in a user's name while she is offline (an
/// offline user has no address to check a request against); at CONNECT, what the directory
/// lists and this record does not hold is deleted from the directory instead
/// (``ClientSession``).
///
/// On disk: `<state>/published/<server>/<user>` (both percent-encoded), mode 0600 in folders
/// of mode 0700, an append-only journal of `+name` and `-name` entries, each ended by a NUL
/// (no file name holds one). It is rewritten compactly when it has grown to several times what
/// it holds. Losing an entry only means a file is not served until published again.
public final class PublishedRecord: Sendable {
    /// The journal's path; nil for a record kept in memory only (no state folder).
    public let path: String?

    private struct State {
        var names: Set<String> = []
        var descriptor: Int32 = -1
        /// Entries in the journal, to know when to compact it.
        var entries = 0
    }

    private let state = Mutex(State())

    /// Why the record cannot be opened.
    public struct OpenError: Error, CustomStringConvertible {
        public let path: String
        public let reason: String
        public var description: String { "cannot keep the record of published files in \(path): \(reason)" }
    }

    /// A record kept in memory, for this run only.
    public init() {
        path = nil
    }

    /// Opens (creating it if needed) the record of `user` on `server` (`host:port`) under
    /// `stateDirectory`.
    public init(stateDirectory: String, server: String, user: String) throws(OpenError) {
        let folder = "\(stateDirectory)/published/\(Self.fileName(server))"
        let path = "\(folder)/\(Self.fileName(user))"
        self.path = path
        do {
            try FileManager.default.createDirectory(
                atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw OpenError(path: path, reason: "\(error.localizedDescription)")
        }
        // O_NOFOLLOW: a symbolic link planted in place of the record is not written through.
        let descriptor = open(path, O_RDWR | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw OpenError(path: path, reason: String(cString: strerror(errno))) }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(descriptor, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            contents += chunk[0..<count]
        }
        var names = Set<String>()
        var entries = 0
        for entry in contents.split(separator: 0) {
            guard entry.count > 1, let name = String(validating: entry.dropFirst(), as: UTF8.self) else { continue }
            entries += 1
            switch entry.first {
            case UInt8(ascii: "+"): names.insert(name)
            case UInt8(ascii: "-"): names.remove(name)
            default: entries -= 1
            }
        }
        let loaded = State(names: names, descriptor: descriptor, entries: entries)
        state.withLock { $0 = loaded }
        if entries > 2 * names.count + 64 { compact() }
    }

    deinit {
        let descriptor = state.withLock { $0.descriptor }
        if descriptor >= 0 { close(descriptor) }
    }

    /// The names recorded as published.
    public var names: Set<String> { state.withLock { $0.names } }

    public func contains(_ name: String) -> Bool { state.withLock { $0.names.contains(name) } }

    /// Records that `names` were published.
    public func insert<Names: Sequence<String>>(_ names: Names) {
        change(names, sign: UInt8(ascii: "+")) { $0.insert($1).inserted }
    }

    /// Records that `names` are no longer published.
    public func remove<Names: Sequence<String>>(_ names: Names) {
        change(names, sign: UInt8(ascii: "-")) { $0.remove($1) != nil }
    }

    private func change<Names: Sequence<String>>(
        _ names: Names, sign: UInt8, _ apply: (inout Set<String>, String) -> Bool
    ) {
        state.withLock { state in
            var journal: [UInt8] = []
            for name in names where !name.utf8.contains(0) && apply(&state.names, name) {
                journal.append(sign)
                journal += name.utf8
                journal.append(0)
                state.entries += 1
            }
            guard !journal.isEmpty, state.descriptor >= 0 else { return }
            Self.writeAll(journal, to: state.descriptor)
        }
    }

    /// Rewrites the journal with one entry per name (a new file renamed over the old one).
    private func compact() {
        guard let path else { return }
        state.withLock { state in
            let temporary = path + ".new"
            unlink(temporary)
            let descriptor = open(temporary, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { return }
            var journal: [UInt8] = []
            for name in state.names {
                journal.append(UInt8(ascii: "+"))
                journal += name.utf8
                journal.append(0)
            }
            guard Self.writeAll(journal, to: descriptor), fsync(descriptor) == 0, rename(temporary, path) == 0 else {
                close(descriptor)
                unlink(temporary)
                return
            }
            close(state.descriptor)
            state.descriptor = descriptor
            state.entries = state.names.count
        }
    }

    @discardableResult
    private static func writeAll(_ bytes: [UInt8], to descriptor: Int32) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return false }
            offset += written
        }
        return true
    }

    /// A name as one path component: letters, digits, `.`, `_` and `-` as they are (not a
    /// leading dot), everything else as `%HH`.
    static func fileName(_ text: String) -> String {
        var result = ""
        for (index, byte) in text.utf8.enumerated() {
            let plain =
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_")
                || byte == UInt8(ascii: "-") || (byte == UInt8(ascii: ".") && index > 0)
            result += plain ? String(UnicodeScalar(byte)) : String(format: "%%%02X", byte)
        }
        return result.isEmpty ? "%" : result
    }

    /// `$XDG_STATE_HOME/p2p-client`, else `~/.local/state/p2p-client`; nil without either.
    public static var defaultStateDirectory: String? {
        let environment = ProcessInfo.processInfo.environment
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") { return state + "/p2p-client" }
        if let home = environment["HOME"], !home.isEmpty { return home + "/.local/state/p2p-client" }
        return nil
    }
}
