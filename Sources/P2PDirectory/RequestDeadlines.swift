import NIOCore

/// The request deadlines of one event loop's connections, checked by one repeating sweep of
/// the loop instead of a timer per connection.
///
/// Every connection gets the same time for its request, and nearly every one sends it at
/// once: a timer of its own (`scheduleTask`, cancelled when the request is whole) cost a
/// task, a promise and a removal from the loop's timer heap per connection, about 3% of the
/// server's CPU at 64 clients. Here a connection is a dictionary entry while it waits; the
/// sweep runs every tenth of the timeout (between 10 ms and 1 s) while anything waits, so a
/// deadline passes at most that much late.
///
/// Confined to its event loop: every method runs on it.
final class RequestDeadlines: @unchecked Sendable {
    /// What a connection is told when its deadline passes.
    protocol Waiting: AnyObject {
        func deadlinePassed(context: ChannelHandlerContext)
    }

    let eventLoop: any EventLoop
    let timeout: TimeAmount
    private let period: TimeAmount
    private var waiting:
        [ObjectIdentifier: (deadline: NIODeadline, connection: any Waiting, context: ChannelHandlerContext)] =
            [:]
    private var sweep: RepeatedTask?

    init(timeout: TimeAmount, eventLoop: any EventLoop) {
        self.timeout = timeout
        self.eventLoop = eventLoop
        period = .nanoseconds(min(max(timeout.nanoseconds / 10, 10_000_000), 1_000_000_000))
    }

    /// Starts `connection`'s deadline: `timeout` from now.
    func start(_ connection: any Waiting, context: ChannelHandlerContext) {
        eventLoop.preconditionInEventLoop()
        waiting[ObjectIdentifier(connection)] = (eventLoop.now + timeout, connection, context)
        if sweep == nil {
            // The task holds this object until nothing waits (then it is cancelled).
            sweep = eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { task in
                self.expire(task)
            }
        }
    }

    /// `connection` no longer has a deadline (its request is whole, or it is gone).
    func stop(_ connection: any Waiting) {
        eventLoop.preconditionInEventLoop()
        waiting.removeValue(forKey: ObjectIdentifier(connection))
    }

    /// How many connections wait.
    var count: Int { waiting.count }

    /// Whether the sweep is scheduled (it is only while a connection waits).
    var isSweeping: Bool { sweep != nil }

    private func expire(_ task: RepeatedTask) {
        let now = eventLoop.now
        let passed = waiting.filter { $0.value.deadline <= now }
        for (key, entry) in passed {
            // An earlier connection's reaction may have stopped this one's deadline.
            guard waiting.removeValue(forKey: key) != nil else { continue }
            entry.connection.deadlinePassed(context: entry.context)
        }
        if waiting.isEmpty {
            task.cancel()
            sweep = nil
        }
    }
}
