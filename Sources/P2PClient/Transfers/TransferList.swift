import Synchronization

/// One download or upload of this client, as the shell's TRANSFERS lists it.
public struct Transfer: Sendable, Equatable, Identifiable {
    public enum Direction: String, Sendable {
        case download
        case upload
    }

    public enum State: Sendable, Equatable {
        /// Waiting for one of the downloads under way to end (``DownloadSlots``).
        case queued
        case running
        /// Complete; `verified` when its bytes were checked against the owner's SHA-256 (our
        /// peers; a third-party peer's plain GET_FILE is not).
        case done(verified: Bool)
        /// The owner does not serve the file.
        case notFound
        case failed(reason: String)
    }

    public let id: Int
    public let direction: Direction
    /// The file's name at its owner.
    public let file: String
    /// A download's owners; an upload's downloader (its address, and its key when it proved one).
    public let peers: [String]
    /// Where a download goes.
    public let localPath: String?
    public internal(set) var bytes: Int64 = 0
    /// The size, when known (our peers announce it; a range's length for an upload).
    public internal(set) var total: Int64?
    public internal(set) var state = State.running
    /// When it started (left the queue).
    public internal(set) var started: ContinuousClock.Instant
    public internal(set) var ended: ContinuousClock.Instant?

    /// Bytes a second so far (to its end when it ended).
    public func rate(now: ContinuousClock.Instant = .now) -> Double {
        let elapsed = (ended ?? now) - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return seconds > 0 ? Double(bytes) / seconds : 0
    }
}

/// The transfers of one client: those under way, and the last ``keptEnded`` that ended (a peer
/// that downloads a small file in a loop cannot grow the list without end).
public final class TransferList: Sendable {
    /// Ended transfers kept for the list, the newest.
    public let keptEnded: Int
    private struct State {
        var next = 1
        var transfers: [Int: Transfer] = [:]
        /// The ids of the ended ones, oldest first.
        var ended: [Int] = []
    }

    private let state = Mutex(State())

    public init(keptEnded: Int = 200) {
        self.keptEnded = keptEnded
    }

    /// A transfer starting now; its id.
    func start(
        _ direction: Transfer.Direction, file: String, peers: [String], localPath: String? = nil, total: Int64? = nil,
        queued: Bool = false
    ) -> Int {
        state.withLock { state in
            let id = state.next
            state.next += 1
            state.transfers[id] = Transfer(
                id: id, direction: direction, file: file, peers: peers, localPath: localPath, total: total,
                state: queued ? .queued : .running, started: .now)
            return id
        }
    }

    /// Queued transfer `id` runs from now.
    func run(_ id: Int) {
        state.withLock { state in
            guard state.transfers[id]?.state == .queued else { return }
            state.transfers[id]?.state = .running
            state.transfers[id]?.started = .now
        }
    }

    /// `bytes` of transfer `id` have gone so far (of `total`, when known).
    func progress(_ id: Int, bytes: Int64, total: Int64? = nil) {
        state.withLock { state in
            state.transfers[id]?.bytes = bytes
            if let total { state.transfers[id]?.total = total }
        }
    }

    /// Transfer `id` ended so.
    func end(_ id: Int, _ outcome: Transfer.State) {
        state.withLock { state in
            guard var transfer = state.transfers[id], transfer.ended == nil else { return }
            transfer.state = outcome
            transfer.ended = .now
            if case .done = outcome, let total = transfer.total { transfer.bytes = total }
            state.transfers[id] = transfer
            state.ended.append(id)
            // The oldest ended ones beyond the bound go (those under way always stay).
            if state.ended.count > keptEnded {
                for old in state.ended.prefix(state.ended.count - keptEnded) { state.transfers[old] = nil }
                state.ended.removeFirst(state.ended.count - keptEnded)
            }
        }
    }

    /// Every transfer listed, in the order they started.
    public var all: [Transfer] { state.withLock { $0.transfers.values.sorted { $0.id < $1.id } } }

    /// The transfer `id`, if still listed.
    public func transfer(_ id: Int) -> Transfer? { state.withLock { $0.transfers[id] } }
}

/// At most `limit` downloads at once; the others wait their turn, first come first served.
actor DownloadSlots {
    let limit: Int
    private var busy = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    func acquire() async {
        if busy < limit {
            busy += 1
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func release() {
        if waiting.isEmpty {
            busy -= 1
        } else {
            // The slot passes to the next in line.
            waiting.removeFirst().resume()
        }
    }
}
