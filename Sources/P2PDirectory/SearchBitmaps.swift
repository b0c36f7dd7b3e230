import GRDB
import Logging
import P2POperationLog
import Synchronization

/// In-memory bitmaps of the files holding a word that starts with a frequent prefix, beside
/// the SQLite store's full-text index: "does file X have a word starting with `txt`" in one
/// memory read.
///
/// Why: FTS5 answers an AND by walking the lists of its words together, and walks a long list
/// entry by entry between two matches of the rarer word. `file3 w999` at 10 million files
/// walked the million files with a word `file3` (10 ms of the search's 13) to find 1,500
/// hits. With a bitmap for `file3`, the search reads only the 16,500 files of `w999*` from the
/// index and tests each of them in the bitmap.
///
/// What a bit means: bit X of prefix P is set when the file with id X, if there is one, has a
/// word starting with P. Bits are not cleared when a file goes: a search only tests ids it
/// read from the index, where a deleted file no longer is. SQLite hands the highest id out
/// again after that file is deleted; the writer then assigns the new file's bits afresh.
///
/// How a prefix gets one: a search that meets a prefix of up to six letters without a bitmap
/// hands it to the builder thread, which counts the prefix's files in the index (up to
/// `threshold`) and, when there are that many, reads its list into a bitmap, at a low
/// priority and off the search's path. From the moment a build starts, the writer records
/// every file it publishes for that prefix too; it updates every bitmap after each commit and
/// before answering, so a search that starts after a PUBLISH was answered sees the file in
/// every bitmap. At most `capacity` bitmaps are kept (about 1.25 MB each at 10 million files);
/// the least recently used goes first. A prefix found below the threshold is counted again
/// after `recheckInterval`.
final class SearchBitmaps: Sendable {
    struct Settings: Sendable {
        /// The fewest files a prefix must match to get a bitmap.
        var threshold = 50_000
        /// The most bitmaps kept.
        var capacity = 32
        /// How long a prefix found below the threshold is left alone.
        var recheckInterval: Duration = .seconds(60)
    }

    /// The longest prefix that gets a bitmap: the longest the index keeps a list for.
    static let longestPrefix = SQLiteDirectoryStore.longestPrefixList

    let settings: Settings
    private let shared = Shared()
    private let builder: BatchingWorker<String>

    /// The state, in a class so that the builder's closure can hold it.
    private final class Shared: Sendable {
        let state = Mutex(State())
    }

    private struct State {
        var ready: [String: (bitmap: PrefixBitmap, lastUse: UInt64)] = [:]
        /// Prefixes being read from the index, with the files published meanwhile.
        var building: [String: [(id: Int64, holds: Bool)]] = [:]
        /// Prefixes counted below the threshold, and when.
        var counted: [String: ContinuousClock.Instant] = [:]
        var uses: UInt64 = 0
        var closed = false
    }

    /// - Parameter reader: the connections the builder reads the index with.
    init(settings: Settings = Settings(), reader: any DatabaseReader, logger: Logger) {
        self.settings = settings
        let shared = self.shared
        // Niceness 10: a build takes the cores only when the requests leave them.
        builder = BatchingWorker<String>(
            name: "p2p-search-bitmaps", capacity: 1024, maxBatch: 1, gatherTime: 0, niceness: 10
        ) { prefixes, _ in
            for prefix in prefixes {
                do {
                    try Self.build(prefix, settings: settings, state: shared.state, reader: reader)
                } catch {
                    shared.state.withLock { _ = $0.building.removeValue(forKey: prefix) }
                    logger.warning("search bitmap for \"\(prefix)\" not built: \(error)")
                }
            }
            return .processed
        }
        builder.start()
    }

    /// Stops the builder; a build under way is abandoned.
    func close() {
        shared.state.withLock { $0.closed = true }
        builder.stop()
    }

    /// The bitmaps of those of `words` that have one; the others that could have one are
    /// handed to the builder to be counted.
    func bitmaps(for words: [String]) -> [String: PrefixBitmap] {
        let now = ContinuousClock.now
        var found: [String: PrefixBitmap] = [:]
        var toCount: [String] = []
        shared.state.withLock { state in
            for word in words where word.unicodeScalars.count <= Self.longestPrefix {
                if var entry = state.ready[word] {
                    state.uses += 1
                    entry.lastUse = state.uses
                    state.ready[word] = entry
                    found[word] = entry.bitmap
                } else if state.building[word] == nil,
                    state.counted[word].map({ now - $0 >= settings.recheckInterval }) ?? true
                {
                    // Counted once per interval however often it is searched.
                    state.counted[word] = now
                    toCount.append(word)
                }
            }
        }
        for word in toCount { builder.submit(word) }
        return found
    }

    /// Whether `prefix` has a bitmap (for tests).
    func isReady(_ prefix: String) -> Bool {
        shared.state.withLock { $0.ready[prefix] != nil }
    }

    /// Called by the writer after a commit, before answering, with the files it published.
    func didPublish(_ files: [(id: Int64, name: String, description: String)]) {
        guard !files.isEmpty else { return }
        // The prefixes are taken after the commit: a build that starts later reads a snapshot
        // holding these files.
        let prefixes = shared.state.withLock { Array($0.ready.keys) + Array($0.building.keys) }
        guard !prefixes.isEmpty else { return }
        let holdings = files.map { file in
            let words = DirectoryRules.searchWords(file.name) + DirectoryRules.searchWords(file.description)
            return (file.id, prefixes.map { prefix in words.contains { $0.hasPrefix(prefix) } })
        }
        shared.state.withLock { state in
            for (id, holds) in holdings {
                for (prefix, holds) in zip(prefixes, holds) {
                    if state.ready[prefix] != nil {
                        state.ready[prefix]!.bitmap.assign(id, holds)
                    } else if state.building[prefix] != nil {
                        state.building[prefix]!.append((id, holds))
                    }
                }
            }
        }
    }

    /// On the builder thread: counts `prefix`'s files and, when they reach the threshold,
    /// reads its list into a bitmap.
    private static func build(
        _ prefix: String, settings: Settings, state: borrowing Mutex<State>, reader: any DatabaseReader
    ) throws {
        let expression = SQLiteDirectoryStore.quotedForMatch(prefix) + "*"
        let count = try reader.read { db in
            try Int.fetchOne(
                db.cachedStatement(
                    sql: "SELECT count(*) FROM (SELECT 1 FROM file_search WHERE file_search MATCH ?1 LIMIT ?2)"),
                arguments: [expression, settings.threshold]) ?? 0
        }
        guard count >= settings.threshold else { return }
        let started = state.withLock { state -> Bool in
            guard !state.closed, state.ready[prefix] == nil, state.building[prefix] == nil else { return false }
            state.building[prefix] = []
            return true
        }
        guard started else { return }
        // The read starts after the prefix was registered: what the writer commits from now on
        // is recorded in `building`, what it committed before is in this snapshot.
        var bitmap = PrefixBitmap()
        var abandoned = false
        try reader.read { db in
            let ids = try Int64.fetchCursor(
                db.cachedStatement(sql: "SELECT rowid FROM file_search WHERE file_search MATCH ?1"),
                arguments: [expression])
            var read = 0
            while let id = try ids.next() {
                bitmap.assign(id, true)
                read += 1
                if read % 65_536 == 0, state.withLock({ $0.closed }) {
                    abandoned = true
                    return
                }
            }
        }
        state.withLock { state in
            let published = state.building.removeValue(forKey: prefix) ?? []
            guard !abandoned, !state.closed else { return }
            for (id, holds) in published { bitmap.assign(id, holds) }
            state.uses += 1
            state.ready[prefix] = (bitmap, state.uses)
            if state.ready.count > settings.capacity,
                let oldest = state.ready.min(by: { $0.value.lastUse < $1.value.lastUse })?.key
            {
                state.ready.removeValue(forKey: oldest)
            }
        }
    }
}

/// A set of file ids as bits, in chunks of 65,536 so that a change to a bitmap a search is
/// reading copies one 8 KiB chunk, not the whole bitmap.
struct PrefixBitmap: Sendable {
    private static let chunkShift = 16
    private static let wordsPerChunk = (1 << chunkShift) / 64
    private var chunks: [[UInt64]] = []
    /// Bits set: the files holding the prefix (deleted ones included).
    private(set) var count = 0

    func contains(_ id: Int64) -> Bool {
        guard id >= 0 else { return false }
        let chunk = Int(id >> Self.chunkShift)
        guard chunk < chunks.count, !chunks[chunk].isEmpty else { return false }
        let bit = Int(id) & ((1 << Self.chunkShift) - 1)
        return chunks[chunk][bit >> 6] & (1 << UInt64(bit & 63)) != 0
    }

    mutating func assign(_ id: Int64, _ value: Bool) {
        guard id >= 0 else { return }
        let chunk = Int(id >> Self.chunkShift)
        if chunk >= chunks.count {
            guard value else { return }
            chunks.append(contentsOf: repeatElement([], count: chunk + 1 - chunks.count))
        }
        if chunks[chunk].isEmpty {
            guard value else { return }
            chunks[chunk] = [UInt64](repeating: 0, count: Self.wordsPerChunk)
        }
        let bit = Int(id) & ((1 << Self.chunkShift) - 1)
        let mask: UInt64 = 1 << UInt64(bit & 63)
        let word = chunks[chunk][bit >> 6]
        guard (word & mask != 0) != value else { return }
        chunks[chunk][bit >> 6] = value ? word | mask : word & ~mask
        count += value ? 1 : -1
    }
}
