import NIOCore
import P2PProtocol

/// Hands the store what one event loop read in one pass as one batch of changes and one of
/// queries, and delivers the replies back on that loop in one task per batch.
///
/// With one short request per connection, the store is asked hundreds of times a second per
/// client; a batch per pass lets the SQLite store commit all of a pass's changes with one
/// fsync, and costs one task and one wake-up of the loop per batch instead of per request.
/// NIO runs tasks scheduled with `execute` after the I/O of the pass, so a flush scheduled by
/// the first request of a pass sees every request read in it.
///
/// Confined to its event loop: every method runs on it.
final class StoreBatcher: @unchecked Sendable {
    typealias Completion = (Reply) -> Void

    let eventLoop: any EventLoop
    private let store: any DirectoryStore
    private var changes: [DirectoryChange] = []
    private var changeCompletions: [Completion] = []
    private var queries: [DirectoryQuery] = []
    private var queryCompletions: [Completion] = []
    private var flushScheduled = false

    init(store: any DirectoryStore, eventLoop: any EventLoop) {
        self.store = store
        self.eventLoop = eventLoop
    }

    /// Queues `work`; `completion` runs on the event loop with the reply.
    func submit(_ work: StoreWork, completion: @escaping Completion) {
        eventLoop.preconditionInEventLoop()
        switch work {
        case .change(let change):
            changes.append(change)
            changeCompletions.append(completion)
        case .query(let query):
            queries.append(query)
            queryCompletions.append(completion)
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
        if !changes.isEmpty {
            let batch = changes
            let completions = NIOLoopBound(changeCompletions, eventLoop: loop)
            changes = []
            changeCompletions = []
            store.apply(batch) { codes in
                loop.execute {
                    for (completion, code) in zip(completions.value, codes) { completion(.status(code)) }
                }
            }
        }
        if !queries.isEmpty {
            let batch = queries
            let completions = NIOLoopBound(queryCompletions, eventLoop: loop)
            queries = []
            queryCompletions = []
            store.read(batch) { replies in
                loop.execute {
                    for (completion, reply) in zip(completions.value, replies) { completion(reply) }
                }
            }
        }
    }
}
