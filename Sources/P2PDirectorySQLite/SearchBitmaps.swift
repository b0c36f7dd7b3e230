import GRDB
import Logging
import P2PDirectory
import P2POperationLog
import Synchronization

/// In-memory bitmaps beside the SQLite store's full-text index: of the files holding a word
/// that starts with a frequent prefix ("does file X have a word starting with `txt`" in one
/// memory read), and of the files whose owner is connected.
///
/// Why: FTS5 answers an AND by walking the lists of its words together, and walks a long list
/// entry by entry between two matches of the rarer word. `file3 w999` at 10 million files
/// walked the million files with a word `file3` (10 ms of the search's 13) to find 1,500
/// hits, and then looked up each hit's file and owner to put the online owners first. With
/// the bitmaps, the search reads only the 16,500 files of `w999*` from the index, tests each
/// in the bitmaps of `file3` and of the online files, and looks up the files it answers with.
///
/// What a bit means: bit X of a prefix is set when there is a file with id X that has a word
/// starting with the prefix; bit X of the online bitmap when its owner is connected. When
/// every word of a search has a bitmap, the search does not read the index at all: it walks
/// the intersection of the bitmaps (`w123 w456`: two lists of 166,000 files, no hit: 4 ms in
/// the index, well under 1 ms in the bitmaps).
///
/// How a prefix gets one: a search that meets a prefix of up to six letters without a bitmap
/// hands it to the builder thread, which counts the prefix's files in the index (up to
/// `threshold`) and, when there are that many, reads its list into a bitmap, at a low
/// priority and off the search's path; the first search builds the online bitmap the same
/// way. From the moment a build starts, the writer records what it commits for that bitmap
/// too; it updates every bitmap after each commit and before answering, so a search that
/// starts after a PUBLISH or CONNECT was answered sees it. (A search running at the same time
/// as a change may see the change in the index and not yet in a bitmap, or the other way
/// round: as if it had run just before or just after.) At most `capacity` prefix bitmaps are
/// kept, in at most `memoryBudget` bytes (a bitmap takes one bit per id up to the highest:
/// about 1.25 MB at 10 million files); the least recently used goes first. A prefix found
/// below the threshold is counted again after `recheckInterval`.
final class SearchBitmaps: Sendable {
    struct Settings: Sendable {
        /// The fewest files a prefix must match to get a bitmap. (At 10 million files the index
        /// reads 16,500 ids of a prefix in about 1.5 ms, the intersection of two bitmaps takes
        /// a fraction of that.)
        var threshold = 10_000
        /// The most prefix bitmaps kept.
        var capacity = 32
        /// The most memory the prefix bitmaps take together (the online bitmap aside); the
        /// newest is kept even if it alone takes more.
        var memoryBudget = 64 << 20
        /// How long a prefix found below the threshold is left alone.
        var recheckInterval: Duration = .seconds(60)
    }

    /// What a bitmap is of.
    enum Subject: Hashable, Sendable {
        /// The files with a word starting with this (folded) prefix.
        case prefix(String)
        /// The files whose owner is connected.
        case online
    }

    /// The bitmaps a search uses.
    struct Found: Sendable {
        var prefixes: [String: FileBitmap] = [:]
        var online: FileBitmap?
        /// Words whose bitmap is being built: frequent, so better not read from the index alone.
        var building: Set<String> = []
    }

    /// What the writer committed, in order, for the bitmaps.
    enum Change: Sendable {
        /// A file published (its owner is connected).
        case published(id: Int64, name: String, description: String)
        /// Files deleted (DELETE, or their owner's UNREGISTER).
        case deleted(ids: [Int64])
        /// The files of a user who connected (true) or went offline (false).
        case presence(ids: [Int64], online: Bool)
    }

    /// The most prefixes remembered as counted (a search of many different words must not
    /// make the memory grow without end).
    static let maxAsked = 10_000

    /// The longest prefix that gets a bitmap: the longest the index keeps a list for.
    static let longestPrefix = SQLiteDirectoryStore.longestPrefixList

    let settings: Settings
    private let shared = Shared()
    private let builder: BatchingWorker<Subject>

    /// The state, in a class so that the builder's closure can hold it.
    private final class Shared: Sendable {
        let state = Mutex(State())
    }

    private struct State {
        var ready: [Subject: (bitmap: FileBitmap, lastUse: UInt64)] = [:]
        /// Bitmaps being read from the database, with what was committed meanwhile.
        var building: [Subject: [(id: Int64, set: Bool)]] = [:]
        /// Prefixes counted below the threshold, and when; the online bitmap once asked for.
        var asked: [Subject: ContinuousClock.Instant] = [:]
        var uses: UInt64 = 0
        var closed = false
    }

    /// - Parameter reader: the connections the builder reads with.
    init(settings: Settings = Settings(), reader: any DatabaseReader, logger: Logger) {
        self.settings = settings
        let shared = self.shared
        // Niceness 10: a build takes the cores only when the requests leave them.
        builder = BatchingWorker<Subject>(
            name: "p2p-search-bitmaps", capacity: 1024, maxBatch: 1, gatherTime: 0, niceness: 10
        ) { subjects, _ in
            for subject in subjects {
                do {
                    let started = ContinuousClock.now
                    if let files = try Self.build(subject, settings: settings, state: shared.state, reader: reader) {
                        logger.debug(
                            "search bitmap of \(subject) built: \(files) files in \(ContinuousClock.now - started)")
                    }
                } catch {
                    // Tried again at the next search that needs it.
                    shared.state.withLock { state in
                        state.building.removeValue(forKey: subject)
                        state.asked.removeValue(forKey: subject)
                    }
                    logger.warning("search bitmap of \(subject) not built: \(error)")
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

    /// The bitmaps of those of `words` that have one, and the online bitmap if it is built;
    /// the others that could have one are handed to the builder.
    func bitmaps(for words: [String]) -> Found {
        let now = ContinuousClock.now
        var found = Found()
        var toBuild: [Subject] = []
        shared.state.withLock { state in
            for subject in words.filter({ $0.unicodeScalars.count <= Self.longestPrefix }).map(Subject.prefix)
                + [.online]
            {
                if var entry = state.ready[subject] {
                    state.uses += 1
                    entry.lastUse = state.uses
                    state.ready[subject] = entry
                    if case .prefix(let word) = subject {
                        found.prefixes[word] = entry.bitmap
                    } else {
                        found.online = entry.bitmap
                    }
                } else if state.building[subject] != nil {
                    if case .prefix(let word) = subject { found.building.insert(word) }
                } else if state.asked[subject].map({ subject != .online && now - $0 >= settings.recheckInterval })
                    ?? true
                {
                    // A prefix is counted once per interval however often it is searched.
                    state.asked[subject] = now
                    toBuild.append(subject)
                    if state.asked.count > Self.maxAsked {
                        // Many different prefixes searched: forget those whose interval is over,
                        // or, if that is not enough, all but the online bitmap's request.
                        state.asked = state.asked.filter {
                            $0.key == .online || now - $0.value < settings.recheckInterval
                        }
                        if state.asked.count > Self.maxAsked { state.asked = state.asked.filter { $0.key == .online } }
                    }
                }
            }
        }
        for subject in toBuild { builder.submit(subject) }
        return found
    }

    /// How many prefixes are remembered as counted (for tests).
    var rememberedCount: Int {
        shared.state.withLock { $0.asked.count }
    }

    /// Whether the bitmap of `subject` is built (for tests).
    func isReady(_ subject: Subject) -> Bool {
        shared.state.withLock { $0.ready[subject] != nil }
    }

    /// Called by the writer after a commit, before answering, with what it changed in order.
    func didCommit(_ changes: [Change]) {
        guard !changes.isEmpty else { return }
        // The subjects are taken after the commit: a build that starts later reads a snapshot
        // holding it.
        let subjects = shared.state.withLock { Array($0.ready.keys) + Array($0.building.keys) }
        guard !subjects.isEmpty else { return }
        // Outside the lock: which of the prefixes each published file holds.
        let holdings: [[Bool]] = changes.map { change in
            guard case .published(_, let name, let description) = change else { return [] }
            let words = DirectoryRules.searchWords(name) + DirectoryRules.searchWords(description)
            return subjects.map { subject in
                switch subject {
                case .online: true
                case .prefix(let prefix): words.contains { $0.hasPrefix(prefix) }
                }
            }
        }
        shared.state.withLock { state in
            func assign(_ subject: Subject, _ id: Int64, _ set: Bool) {
                if state.ready[subject] != nil {
                    state.ready[subject]!.bitmap.assign(id, set)
                } else if state.building[subject] != nil {
                    state.building[subject]!.append((id, set))
                }
            }
            for (change, holds) in zip(changes, holdings) {
                switch change {
                case .published(let id, _, _):
                    for (subject, set) in zip(subjects, holds) { assign(subject, id, set) }
                case .deleted(let ids):
                    for subject in subjects {
                        for id in ids { assign(subject, id, false) }
                    }
                case .presence(let ids, let online):
                    for id in ids { assign(.online, id, online) }
                }
            }
        }
    }

    /// On the builder thread: reads the bitmap of `subject`; for a prefix, only when it
    /// matches at least `threshold` files. Returns the files in it, nil when not built.
    private static func build(
        _ subject: Subject, settings: Settings, state: borrowing Mutex<State>, reader: any DatabaseReader
    ) throws -> Int? {
        // Closing: what is still queued is dropped.
        guard !state.withLock({ $0.closed }) else { return nil }
        let sql: String
        let arguments: StatementArguments
        switch subject {
        case .online:
            // The connected users from their index, then each one's files from (owner, name).
            sql =
                """
                SELECT f.id FROM user u INDEXED BY user_connected CROSS JOIN file f ON f.owner = u.name WHERE \
                u.ip IS NOT NULL
                """
            arguments = []
        case .prefix(let prefix):
            let expression = SQLiteDirectoryStore.quotedForMatch(prefix) + "*"
            let count = try reader.read { db in
                try Int.fetchOne(
                    db.cachedStatement(
                        sql: "SELECT count(*) FROM (SELECT 1 FROM file_search WHERE file_search MATCH ?1 LIMIT ?2)"),
                    arguments: [expression, settings.threshold]) ?? 0
            }
            guard count >= settings.threshold else { return nil }
            sql = "SELECT rowid FROM file_search WHERE file_search MATCH ?1"
            arguments = [expression]
        }
        let started = state.withLock { state -> Bool in
            guard !state.closed, state.ready[subject] == nil, state.building[subject] == nil else { return false }
            state.building[subject] = []
            return true
        }
        guard started else { return nil }
        // The read starts after the bitmap was registered as building: what the writer commits
        // from now on is recorded in `building`, what it committed before is in this snapshot.
        var bitmap = FileBitmap()
        var abandoned = false
        try reader.read { db in
            let ids = try Int64.fetchCursor(db.cachedStatement(sql: sql), arguments: arguments)
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
        return state.withLock { state -> Int? in
            let committed = state.building.removeValue(forKey: subject) ?? []
            guard !abandoned, !state.closed else { return nil }
            for (id, set) in committed { bitmap.assign(id, set) }
            state.uses += 1
            state.ready[subject] = (bitmap, state.uses)
            var prefixes = state.ready.filter { $0.key != .online && $0.key != subject }
                .sorted { $0.value.lastUse < $1.value.lastUse }.map { ($0.key, $0.value.bitmap.bytes) }
            var bytes = prefixes.reduce(bitmap.bytes) { $0 + $1.1 }
            while !prefixes.isEmpty, prefixes.count + 1 > settings.capacity || bytes > settings.memoryBudget {
                let (oldest, size) = prefixes.removeFirst()
                state.ready.removeValue(forKey: oldest)
                bytes -= size
            }
            return bitmap.count
        }
    }
}

/// A set of file ids as bits, in chunks of 65,536 so that a change to a bitmap a search is
/// reading copies one 8 KiB chunk, not the whole bitmap.
struct FileBitmap: Sendable {
    private static let chunkShift = 16
    private static let wordsPerChunk = (1 << chunkShift) / 64
    private var chunks: [[UInt64]] = []

    /// Bits set.
    var count: Int { chunks.reduce(0) { $0 + $1.reduce(0) { $0 + $1.nonzeroBitCount } } }

    /// The memory the bits take.
    var bytes: Int {
        chunks.count * MemoryLayout<[UInt64]>.stride + chunks.filter { !$0.isEmpty }.count * (1 << Self.chunkShift) / 8
    }

    /// Calls `body` with every id set in all of `bitmaps`, in increasing order, until it
    /// returns false.
    static func forEachInAll(_ bitmaps: [FileBitmap], _ body: (Int64) throws -> Bool) rethrows {
        guard let first = bitmaps.first else { return }
        let chunkCount = bitmaps.map(\.chunks.count).min()!
        for chunk in 0..<chunkCount {
            guard bitmaps.allSatisfy({ !$0.chunks[chunk].isEmpty }) else { continue }
            for index in 0..<wordsPerChunk {
                var word = first.chunks[chunk][index]
                for other in bitmaps.dropFirst() where word != 0 { word &= other.chunks[chunk][index] }
                while word != 0 {
                    let id = Int64(chunk << chunkShift | index << 6 | word.trailingZeroBitCount)
                    guard try body(id) else { return }
                    word &= word - 1
                }
            }
        }
    }

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
        // Unchanged: no write, so a chunk a search is reading is not copied for nothing.
        guard (word & mask != 0) != value else { return }
        chunks[chunk][bit >> 6] = value ? word | mask : word & ~mask
    }
}
