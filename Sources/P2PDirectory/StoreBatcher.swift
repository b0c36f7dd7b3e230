import Logging
import NIOCore
import P2PProtocol

/// Hands the store what one event loop read in one pass as one batch of changes and one of
/// queries, and delivers the replies back on that loop in one task per batch, already encoded:
/// the encoding runs on the store's thread, so a LIST_USERS of 100,000 users (2.8 MB) never
/// holds up the loop.
///
/// With one short request per connection, the store is asked hundreds of times a second per
/// client; a batch per pass lets the SQLite store commit all of a pass's changes with one
/// fsync, and costs one task and one wake-up of the loop per batch instead of per request.
/// NIO runs tasks scheduled with `execute` after the I/O of the pass, so a flush scheduled by
/// the first request of a pass sees every request read in it.
///
/// It also remembers the replies to LIST_USERS and LIST_CONTENT: until a change affects one
/// (``DirectoryStore/directoryVersion``, ``DirectoryStore/changes(since:)``), the same query is
/// answered again from memory, on the loop, without the trip to the store's threads and back.
/// A PUBLISH forgets the LIST_CONTENTs of its owner's files, a CONNECT every LIST_USERS.
///
/// Confined to its event loop: every method runs on it.
final class StoreBatcher: @unchecked Sendable {
    /// Gets the encoded reply and its result code.
    typealias Completion = (ByteBuffer, ResultCode) -> Void

    let eventLoop: any EventLoop
    private let store: any DirectoryStore
    private let encoder: ReplyEncoder
    private let logger: Logger
    private var changes: [DirectoryChange] = []
    private var changeCompletions: [Completion] = []
    private var queries: [DirectoryQuery] = []
    private var queryCompletions: [Completion] = []
    private var flushScheduled = false
    /// Encoded replies still true at the store's version `rememberedVersion`: the changes up to
    /// it have been taken into account.
    private var remembered: [DirectoryQuery: (reply: ByteBuffer, code: ResultCode)] = [:]
    private var rememberedVersion: UInt64 = 0

    /// At most this many remembered replies (each query is a requester and an owner). Every
    /// commit that changes something makes each loop look through them all, so they are few:
    /// enough for the queries asked over and over.
    static let rememberedLimit = 256
    /// ...of at most this many bytes each: a LIST_USERS of a large directory is read each time.
    static let rememberedReplyLimit = 16 * 1024

    init(store: any DirectoryStore, eventLoop: any EventLoop, encoder: ReplyEncoder, logger: Logger) {
        self.store = store
        self.eventLoop = eventLoop
        self.encoder = encoder
        self.logger = logger
    }

    /// Queues `work`; `completion` runs on the event loop with the encoded reply.
    func submit(_ work: StoreWork, completion: @escaping Completion) {
        eventLoop.preconditionInEventLoop()
        switch work {
        case .change(let change):
            changes.append(change)
            changeCompletions.append(completion)
        case .query(let query):
            if let (reply, code) = rememberedReply(to: query) {
                completion(reply, code)
                return
            }
            queries.append(query)
            queryCompletions.append(completion)
        case .answer(let reply, let operation):
            let (buffer, code) = Self.encode(reply, of: operation, with: encoder, logger: logger)
            completion(buffer, code)
            return
        }
        if !flushScheduled {
            flushScheduled = true
            eventLoop.execute { self.flush() }
        }
    }

    private func flush() {
        flushScheduled = false
        let store = self.store
        let loop = eventLoop
        let encoder = self.encoder
        let logger = self.logger
        if !changes.isEmpty {
            let batch = changes
            let completions = NIOLoopBound(changeCompletions, eventLoop: loop)
            changes = []
            changeCompletions = []
            store.apply(batch) { codes in
                let replies = codes.map { code in
                    var buffer = ByteBuffer()
                    encoder.writeCode(code, into: &buffer)
                    return (buffer, code)
                }
                loop.execute {
                    for (completion, reply) in zip(completions.value, replies) { completion(reply.0, reply.1) }
                }
            }
        }
        if !queries.isEmpty {
            // LIST_USERS and SEARCH apart: on a large directory they can take a while, and the
            // short reads of the same pass must not wait for them.
            var groups: [DirectoryOperation: [(DirectoryQuery, Completion)]] = [:]
            for (query, completion) in zip(queries, queryCompletions) {
                groups[query.operation, default: []].append((query, completion))
            }
            queries = []
            queryCompletions = []
            // Read before the store is asked: its replies are at least as new as this.
            let version = store.directoryVersion
            let batcher = NIOLoopBound(self, eventLoop: loop)
            for group in groups.values {
                let batch = group.map(\.0)
                let completions = NIOLoopBound(group.map(\.1), eventLoop: loop)
                store.read(batch) { answers in
                    // The LIST_USERS of one batch usually get the same list, and the
                    // LIST_CONTENTs of a popular owner the same files (a store reads each once
                    // per batch and shares the array, so comparing is cheap): encoded once,
                    // the replies share the bytes.
                    var last: (reply: Reply, encoded: (ByteBuffer, ResultCode))?
                    let replies = zip(batch, answers).map { query, reply in
                        switch reply {
                        case .users, .content:
                            if let last, last.reply == reply { return last.encoded }
                            let encoded = Self.encode(reply, of: query.operation, with: encoder, logger: logger)
                            last = (reply, encoded)
                            return encoded
                        case .status, .hits:
                            return Self.encode(reply, of: query.operation, with: encoder, logger: logger)
                        }
                    }
                    loop.execute {
                        if let version { batcher.value.remember(replies, to: batch, readAt: version) }
                        for (completion, reply) in zip(completions.value, replies) { completion(reply.0, reply.1) }
                    }
                }
            }
        }
    }

    /// The reply remembered for `query`, if no change since it was read affects it.
    private func rememberedReply(to query: DirectoryQuery) -> (ByteBuffer, ResultCode)? {
        guard !remembered.isEmpty else { return nil }
        catchUp()
        return remembered[query]
    }

    /// Forgets the replies the store's changes since `rememberedVersion` affect.
    private func catchUp() {
        guard let version = store.directoryVersion, version != rememberedVersion else { return }
        let (through, changes) = store.changes(since: rememberedVersion)
        rememberedVersion = through
        guard !remembered.isEmpty else { return }
        guard let changes else {
            remembered.removeAll(keepingCapacity: true)
            return
        }
        for query in remembered.keys.filter(changes.affect) { remembered[query] = nil }
    }

    /// Remembers the replies to `queries`, read at the store's version `version` or later,
    /// that no change since has affected.
    private func remember(_ replies: [(ByteBuffer, ResultCode)], to queries: [DirectoryQuery], readAt version: UInt64) {
        catchUp()
        let (_, changes) = store.changes(since: version)
        guard let changes else { return }
        for (query, reply) in zip(queries, replies) {
            if case .search = query { continue }
            guard reply.0.readableBytes <= Self.rememberedReplyLimit, !changes.affect(query) else { continue }
            if remembered.count >= Self.rememberedLimit { remembered.removeAll(keepingCapacity: true) }
            remembered[query] = reply
        }
    }

    private static func encode(
        _ reply: Reply, of operation: DirectoryOperation, with encoder: ReplyEncoder, logger: Logger
    ) -> (ByteBuffer, ResultCode) {
        var buffer = ByteBuffer()
        do {
            try encoder.encode(reply, into: &buffer)
            return (buffer, reply.code)
        } catch {
            // A stored value that no longer fits the protocol: answer "other" rather than cut it.
            logger.error("cannot encode reply to \(operation.rawValue): \(error)")
            buffer.clear()
            encoder.writeCode(operation.otherErrorCode, into: &buffer)
            return (buffer, operation.otherErrorCode)
        }
    }
}
