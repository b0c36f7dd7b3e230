import Foundation
import NIOPosix
import P2PProtocol
import P2PNetworkSupport

/// What SHARE, UNSHARE and SHARED act on: the folders shared whole, and the work of keeping
/// the directory in line with them. While a user is connected, every regular, non-hidden file
/// under a shared folder is published (with its kind and size as the description), followed
/// with inotify: a new or renamed file is published, a removed one deleted from the
/// directory, a changed one keeps its entry. At CONNECT the directory is brought back in line
/// with the folders (what went away while offline is deleted, what is new is published).
///
/// It only sends PUBLISH and DELETE, so it works against any directory server. Nothing it does
/// in the background is printed on stdout: problems go to stderr.
public actor FolderSharing {
    /// Sends one request stamped with the time service's date-time.
    public typealias Send = @Sendable (Request.Command) async throws -> Reply

    /// One shared folder.
    struct Share {
        /// Absolute, symlinks resolved.
        let path: String
        /// What its files' names start with: their folder relative to the share folder
        /// (`photos/`, or nothing for the share folder itself), or the folder's absolute path
        /// for a folder outside the share folder.
        let prefix: String
        /// Names in the directory that stand for files of this folder.
        var published: Set<String> = []
        /// Names this client published itself with a description of its own making (a
        /// PUBLISH typed later replaces that description).
        var described: Set<String> = []
        /// Names DELETEd by hand: not published again while the folder stays shared.
        var excluded: Set<String> = []
        /// Paths relative to `path` that are not published, and why.
        var skipped: [String: SkipReason] = [:]
        /// Folders that could not be followed, and why.
        var unfollowed: [String: String] = [:]

        func contains(_ folder: String) -> Bool { folder == path || folder.hasPrefix(path + "/") }

        /// The start of the names of files inside `folder` (which this share contains).
        func namePrefix(of folder: String) -> String {
            folder == path ? prefix : prefix + folder.dropFirst(path.count + 1) + "/"
        }

        /// Whether `name` stands for a file in `folder` (`namePrefix`), or under it when `deep`.
        static func name(_ name: String, isIn namePrefix: String, deep: Bool) -> Bool {
            if namePrefix.isEmpty {
                return !name.hasPrefix("/") && (deep || !name.contains("/"))
            }
            guard name.hasPrefix(namePrefix) else { return false }
            return deep || !name.dropFirst(namePrefix.count).contains("/")
        }
    }

    /// What one SHARE or reconciliation did.
    public struct Outcome: Sendable, Equatable {
        public var published = 0
        public var deleted = 0
        public var failed = 0
        /// The reason of the last failure.
        public var problem: String?
    }

    /// PUBLISH and DELETE requests in flight at once: the directory server commits concurrent
    /// requests together, so 10,000 files go in seconds rather than one fsync each.
    static let concurrency = 16

    private let served: SharedFolder
    private let output: ClientOutput
    private var shares: [Share] = []
    private var user: String?
    private var send: Send?
    private var watcher: FolderWatcher?
    private var following: Task<Void, Never>?

    public init(served: SharedFolder, output: ClientOutput) {
        self.served = served
        self.output = output
    }

    public enum ShareError: Error, Equatable, CustomStringConvertible {
        case notAFolder(String)
        case notShared(String)

        public var description: String {
            switch self {
            case .notAFolder(let path): return "\(path) is not a folder"
            case .notShared(let path): return "\(path) is not shared"
            }
        }
    }

    /// Shares `path` (absolute): at once while a user is connected, else at the next CONNECT.
    /// Returns what was sent, nil when nobody is connected yet.
    public func share(_ path: String) async throws(ShareError) -> Outcome? {
        guard let folder = SharedFolder.realPath(path), isFolder(folder) else { throw .notAFolder(path) }
        if let holder = shares.first(where: { $0.contains(folder) }) {
            if holder.path != folder {
                output.diagnostic("SHARE: \(path) is already shared, as part of \(holder.path)")
            }
            guard user != nil else { return nil }
            // Again: look at the folder anew (what changed while it was not followed, say).
            return await reconcile(folder, deep: true)
        }
        let root = served.root
        let prefix: String
        if folder == root {
            prefix = ""
        } else if folder.hasPrefix(root == "/" ? "/" : root + "/") {
            prefix = String(folder.dropFirst(root == "/" ? 1 : root.count + 1)) + "/"
        } else {
            // Outside the share folder: its files go by their absolute paths.
            prefix = folder + "/"
        }
        var share = Share(path: folder, prefix: prefix)
        // A folder shared earlier inside this one becomes part of it.
        for inner in shares where share.contains(inner.path) {
            share.published.formUnion(inner.published)
            share.described.formUnion(inner.described)
            share.excluded.formUnion(inner.excluded)
        }
        shares.removeAll { share.contains($0.path) }
        shares.append(share)
        guard user != nil else { return nil }
        startFollowing()
        return await reconcile(folder, deep: true, progress: "SHARE \(path)")
    }

    /// Stops sharing `path`: its files leave the directory (while a user is connected) and are
    /// no longer served.
    public func unshare(_ path: String) async throws(ShareError) -> Outcome {
        let folder = SharedFolder.realPath(path) ?? path
        guard let index = shares.firstIndex(where: { $0.path == folder }) else { throw .notShared(path) }
        let share = shares.remove(at: index)
        watcher?.unwatch(under: share.path)
        guard user != nil else { return Outcome() }
        var outcome = Outcome()
        await apply(publish: [], delete: Array(share.published), to: nil, outcome: &outcome, progress: nil)
        return outcome
    }

    /// A user connected: `existing` are the names the directory lists for it. Brings the
    /// directory in line with every shared folder and starts following them.
    public func connected(user: String, existing: [String], send: @escaping Send) async -> Outcome {
        self.user = user
        self.send = send
        // Followed before they are looked at, so that nothing changing meanwhile goes unseen.
        if !shares.isEmpty { startFollowing() }
        var total = Outcome()
        for index in shares.indices {
            let share = shares[index]
            shares[index].published = Set(existing.filter { Share.name($0, isIn: share.prefix, deep: true) })
            shares[index].described = []
            let outcome = await reconcile(share.path, deep: true, progress: "SHARE \(share.path)")
            total.published += outcome.published
            total.deleted += outcome.deleted
            total.failed += outcome.failed
            total.problem = outcome.problem ?? total.problem
        }
        return total
    }

    /// The user went offline (or away): nothing is followed or sent until the next CONNECT.
    public func disconnected() async {
        user = nil
        send = nil
        following?.cancel()
        following = nil
        await watcher?.stop()
        watcher = nil
    }

    /// PUBLISH typed by hand answered `code` for `name`: whether this client had published that
    /// name itself with a description of its own making (so the typed one should replace it).
    public func publishedByHand(_ name: String) -> Bool {
        var hadOurDescription = false
        for index in shares.indices {
            shares[index].excluded.remove(name)
            if shares[index].described.remove(name) != nil { hadOurDescription = true }
        }
        return hadOurDescription
    }

    /// DELETE typed by hand succeeded (or the name was not there): it is not published again.
    public func deletedByHand(_ name: String) {
        for index in shares.indices where Share.name(name, isIn: shares[index].prefix, deep: true) {
            shares[index].published.remove(name)
            shares[index].described.remove(name)
            shares[index].excluded.insert(name)
        }
    }

    /// What SHARED prints: one line per shared folder.
    public func summary() -> [String] {
        shareSummaries().map { share in
            var line = "\(share.path): \(share.published) files published"
            if share.waitsForConnect { line += " (at the next CONNECT)" }
            if !share.skipped.isEmpty {
                line +=
                    ", \(share.skipped.map(\.count).reduce(0, +)) skipped ("
                    + share.skipped.map { "\($0.count) \($0.reason)" }.joined(separator: ", ") + ")"
            }
            if share.withdrawn > 0 { line += ", \(share.withdrawn) withdrawn by DELETE" }
            if share.unfollowed > 0 { line += ", \(share.unfollowed) folders not followed" }
            return line
        }
    }

    /// One shared folder, as SHARED and the web face's Shares page show it.
    public struct ShareSummary: Sendable {
        public var path: String
        public var published: Int
        /// Files not published, how many for each reason (`hidden`, `symbolic link`, ...).
        public var skipped: [(reason: String, count: Int)]
        /// Files withdrawn from it by a typed DELETE.
        public var withdrawn: Int
        /// Folders in it that cannot be followed for changes.
        public var unfollowed: Int
        /// Nobody is connected: it is published at the next CONNECT.
        public var waitsForConnect: Bool
    }

    public func shareSummaries() -> [ShareSummary] {
        shares.map { share in
            var reasons: [SkipReason: Int] = [:]
            for reason in share.skipped.values { reasons[reason, default: 0] += 1 }
            return ShareSummary(
                path: share.path, published: share.published.count,
                skipped: reasons.sorted { $0.key < $1.key }.map { ($0.key.rawValue, $0.value) },
                withdrawn: share.excluded.count,
                unfollowed: share.unfollowed.count, waitsForConnect: user == nil)
        }
    }

    // MARK: Keeping in line

    private func startFollowing() {
        guard watcher == nil else { return }
        do {
            let watcher = try FolderWatcher()
            self.watcher = watcher
            following = Task { [weak self] in
                for await batch in watcher.changes {
                    await self?.handle(batch)
                }
            }
        } catch {
            output.diagnostic("SHARE: \(error); changes are taken in at the next CONNECT")
        }
    }

    private func handle(_ batch: [FolderEvent]) async {
        guard user != nil else { return }
        var dirty: [(folder: String, deep: Bool)] = []
        for event in batch {
            switch event {
            case .filesChanged(let folder):
                dirty.append((folder, false))
            case .folderAdded(let folder):
                dirty.append((folder, true))
            case .folderRemoved(let folder):
                watcher?.unwatch(under: folder)
                dirty.append((folder, true))
            case .overflow:
                dirty += shares.map { ($0.path, true) }
            }
        }
        var seen = Set<String>()
        for (folder, deep) in dirty where seen.insert("\(deep) \(folder)").inserted {
            // A deep look at a folder covers a shallow one of the same folder.
            if !deep && seen.contains("true \(folder)") { continue }
            let outcome = await reconcile(folder, deep: deep)
            if outcome.failed > 0 {
                output.diagnostic(
                    "SHARE: \(outcome.failed) changes under \(folder) did not reach the directory"
                        + (outcome.problem.map { ": \($0)" } ?? ""))
            }
        }
    }

    /// Makes the directory's entries for `folder` (and its subfolders when `deep`) match the
    /// files there now.
    private func reconcile(_ folder: String, deep: Bool, progress: String? = nil) async -> Outcome {
        var outcome = Outcome()
        guard let found = shares.first(where: { $0.contains(folder) }) else { return outcome }
        let relative = folder == found.path ? "" : String(folder.dropFirst(found.path.count + 1)) + "/"
        // A hidden folder is not shared, whatever happens in it.
        guard !relative.split(separator: "/").contains(where: { $0.hasPrefix(".") }) else { return outcome }
        let scan: FolderScan
        let watcher = self.watcher
        do {
            scan = try await BlockingWork.run {
                FolderScanner.scan(
                    folder, share: found.path, prefix: found.prefix, deep: deep, follow: watcher.map { $0.watch })
            }
        } catch {
            outcome.problem = "\(error)"
            return outcome
        }
        // Looked up again: a command may have changed the shares while the folder was read.
        guard let index = shares.firstIndex(where: { $0.path == found.path }) else { return outcome }
        let share = shares[index]
        let namePrefix = share.namePrefix(of: folder)
        let current = share.published.filter { Share.name($0, isIn: namePrefix, deep: deep) }
        let wanted = Set(scan.files.keys).subtracting(share.excluded)
        let toPublish = wanted.subtracting(current).sorted().map { ($0, scan.files[$0]!) }
        // Only what is gone goes: a name published by hand for a file the scan leaves out (a
        // hidden one, say) stays while the file is there.
        let toDelete = current.subtracting(wanted).filter { !served.hasRegularFile($0) }.sorted()

        shares[index].skipped = shares[index].skipped.filter { path, _ in
            !Share.name(path, isIn: relative, deep: deep)
        }
        shares[index].skipped.merge(scan.skipped) { $1 }
        for followed in scan.followed { shares[index].unfollowed[followed] = nil }
        shares[index].unfollowed.merge(scan.unfollowed) { $1 }
        await apply(publish: toPublish, delete: toDelete, to: share.path, outcome: &outcome, progress: progress)
        return outcome
    }

    /// Sends the PUBLISHes and DELETEs, a few at a time, and records what the directory holds.
    private func apply(
        publish: [(name: String, description: String)], delete: [String], to sharePath: String?,
        outcome: inout Outcome, progress: String?
    ) async {
        guard let user, let send else { return }
        let work = publish.map { Change.publish($0.name, $0.description) } + delete.map { Change.delete($0) }
        guard !work.isEmpty else { return }
        var done = 0
        var lastShown = ContinuousClock.now
        let total = work.count
        await withTaskGroup(of: (index: Int, code: ResultCode?, problem: String?).self) { group in
            var next = 0
            while next < min(Self.concurrency, total) {
                let index = next
                group.addTask { await Self.perform(work[index], as: user, with: send, index: index) }
                next += 1
            }
            while let (index, code, problem) = await group.next() {
                if next < total {
                    let queued = next
                    group.addTask { await Self.perform(work[queued], as: user, with: send, index: queued) }
                    next += 1
                }
                done += 1
                if let problem { outcome.problem = problem }
                record(work[index], code: code, sharePath: sharePath, outcome: &outcome)
                if let progress, let show = output.progress, ContinuousClock.now - lastShown > .milliseconds(200) {
                    lastShown = .now
                    show("\(progress): \(done) of \(total) changes sent")
                }
            }
        }
        if progress != nil { output.progress?(nil) }
    }

    private enum Change: Sendable {
        case publish(String, String)
        case delete(String)
    }

    /// Sends one change: the code answered, or why there is none.
    private static func perform(_ change: Change, as user: String, with send: Send, index: Int) async -> (
        index: Int, code: ResultCode?, problem: String?
    ) {
        let command: Request.Command
        switch change {
        case .publish(let name, let description):
            command = .publish(user: user, fileName: name, description: description)
        case .delete(let name):
            command = .delete(user: user, fileName: name)
        }
        do {
            return (index, try await send(command).code, nil)
        } catch {
            return (index, nil, "\(error)")
        }
    }

    /// What the directory holds after it answered `code` to `item` (nil: no answer).
    private func record(_ item: Change, code: ResultCode?, sharePath: String?, outcome: inout Outcome) {
        let index = sharePath.flatMap { path in shares.firstIndex { $0.path == path } }
        switch item {
        case .publish(let name, _):
            // 3: already published by this user (by hand, say): it is there all the same.
            if code == 0 || code == 3 {
                if code == 0 { outcome.published += 1 }
                served.publish(name)
                if let index {
                    shares[index].published.insert(name)
                    if code == 0 { shares[index].described.insert(name) }
                }
            } else {
                outcome.failed += 1
                if let code { outcome.problem = "PUBLISH \(name): \(ResultLine.line(.publish, code))" }
            }
        case .delete(let name):
            // 3: not published: gone all the same.
            if code == 0 || code == 3 {
                if code == 0 { outcome.deleted += 1 }
                served.unpublish(name)
                if let index {
                    shares[index].published.remove(name)
                    shares[index].described.remove(name)
                }
            } else {
                outcome.failed += 1
                if let code { outcome.problem = "DELETE \(name): \(ResultLine.line(.delete, code))" }
            }
        }
    }

    private nonisolated func isFolder(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    }
}
