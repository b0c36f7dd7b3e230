import Foundation
import Logging
import P2POperationLog
import P2PProtocol
import ServiceLifecycle
import Synchronization

/// How the server checks that connected users' peers are still there.
public struct PeerCheckSettings: Sendable {
    /// Time between two rounds; zero turns the checks off.
    public var interval: Duration
    /// Rounds in a row a peer must fail (refuse, close before a result code, or give none
    /// within `timeout`) before its user goes offline.
    public var failuresToExpire: Int
    /// How long one check (connecting, the request and the reply's result code) may take.
    public var timeout: Duration
    /// Checks in flight at once.
    public var concurrency: Int

    public init(
        interval: Duration = .seconds(30), failuresToExpire: Int = 3, timeout: Duration = .seconds(2),
        concurrency: Int = 256
    ) {
        self.interval = interval
        self.failuresToExpire = failuresToExpire
        self.timeout = timeout
        self.concurrency = concurrency
    }

    public var isEnabled: Bool { interval > .zero }
}

/// Takes dead peers out of the directory. Every ``PeerCheckSettings/interval`` it asks each
/// connected user's recorded address and port for a file no peer has
/// (`GET_FILE` ``ReservedFileName/peerCheck``) and reads the reply to its end before closing:
/// a request every peer of the protocol already answers (code 1, no such file), because the
/// third-party peers do not survive a connection that ends before a request (see
/// ``PeerProbe``). Any result code means alive; a refusal, a close or reset before the code,
/// or no code within ``PeerCheckSettings/timeout`` is a failure. A user whose peer failed
/// ``PeerCheckSettings/failuresToExpire`` rounds in a row goes offline as with DISCONNECT
/// (``DirectoryChange/expire(user:ip:port:)``, which leaves a user that reconnected meanwhile
/// alone), with a console line and an `EXPIRE` operation record stamped with the server's time.
///
/// The checks run on a thread of their own (``PeerProbe``: plain sockets and `poll`), never on
/// the event loops serving requests, with at
/// most ``PeerCheckSettings/concurrency`` attempts at once, and are spread evenly over 80% of
/// the interval rather than fired at once: a check costs about what a request does (a TCP
/// connection and a few bytes each way), so 100,000 users checked back to back would halve the server's throughput on
/// two cores, and spread over 30 s they cost a few percent. A request never waits for them.
public final class PeerChecker: Service, Sendable {
    public let settings: PeerCheckSettings
    private let store: any DirectoryStore
    private let operationLog: (any OperationLogSink)?
    /// Users whose control connection is open are alive by that; they are not probed.
    private let controls: ControlSessions?
    private let console: @Sendable (String) -> Void
    private let logger: Logger
    /// Names this server's claims on the users it checks (several servers sharing a directory).
    private let checkerID = UUID().uuidString
    /// Two rounds and a check's time: a server that dies leaves its users to the others by then.
    private var leaseSeconds: TimeInterval {
        let interval = settings.interval.components
        let timeout = settings.timeout.components
        return 2 * (Double(interval.seconds) + Double(interval.attoseconds) / 1e18) + Double(timeout.seconds)
            + Double(timeout.attoseconds) / 1e18
    }

    public init(
        store: any DirectoryStore,
        settings: PeerCheckSettings,
        operationLog: (any OperationLogSink)?,
        controls: ControlSessions? = nil,
        console: @escaping @Sendable (String) -> Void,
        logger: Logger
    ) {
        self.store = store
        self.settings = settings
        self.operationLog = operationLog
        self.controls = controls
        self.console = console
        self.logger = logger
    }

    /// What one round found.
    public struct Round: Sendable, Hashable {
        public var checked = 0
        public var failed = 0
        public var expired: [String] = []
    }

    public func run() async throws {
        guard settings.isEnabled else { return }
        await cancelWhenGracefulShutdown { await self.checkUntilCancelled() }
        // Shutting down: the users this server claimed go to the others at their next round,
        // not when the claims run out. In a task of its own, which the cancellation that
        // ended the checks does not reach (the store bounds it with its deadline).
        let store = self.store
        let checker = checkerID
        let logger = self.logger
        await Task {
            do {
                try await store.stopChecking(checker: checker)
            } catch {
                logger.warning("peer check: cannot give back this server's claims: \(error)")
            }
        }.value
    }

    private func checkUntilCancelled() async {
        var failures: [ConnectedUser: Int] = [:]
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: settings.interval)
            } catch {
                return
            }
            let start = ContinuousClock.now
            let round = await self.round(failures: &failures)
            let took = ContinuousClock.now - start
            let milliseconds = took.components.seconds * 1000 + took.components.attoseconds / 1_000_000_000_000_000
            let summary =
                "peer check: \(round.checked) peers checked in \(milliseconds) ms, "
                + "\(round.failed) failed, \(round.expired.count) expired"
            if round.failed > 0 {
                logger.info("\(summary)")
            } else {
                logger.debug("\(summary)")
            }
        }
    }

    /// Checks every connected user once; `failures` carries the failures in a row from one
    /// round to the next (by user and address: a user that reconnected starts again at 0).
    public func round(failures: inout [ConnectedUser: Int]) async -> Round {
        var users: [ConnectedUser]
        do {
            users = try await store.usersToCheck(checker: checkerID, lease: leaseSeconds)
            if let controls, controls.count > 0 { users.removeAll { controls.holds($0) } }
        } catch {
            logger.warning("peer check: cannot read the connected users: \(error)")
            return Round()
        }
        var result = Round()
        result.checked = users.count
        // Checks start in slices every 10 ms, so that the round lasts about 80% of the interval.
        let slice = Duration.milliseconds(10)
        let slices = max(1, Int((settings.interval * 0.8) / slice))
        let perSlice = max(1, (users.count + slices - 1) / slices)
        let cancelled = CancellationFlag()
        let answered = await withTaskCancellationHandler {
            await PeerProbe.run(
                users.map { PeerProbe.Target(ip: $0.ip, port: $0.port) }, timeout: settings.timeout,
                concurrency: settings.concurrency, slice: slice, perSlice: perSlice, shouldStop: cancelled.isSet)
        } onCancel: {
            cancelled.set()
        }
        let failed = zip(users, answered).filter { !$0.1 }.map(\.0)
        if Task.isCancelled { return result }
        result.failed = failed.count
        var next: [ConnectedUser: Int] = [:]
        var due: [(user: ConnectedUser, failures: Int)] = []
        for user in failed {
            let count = failures[user, default: 0] + 1
            if count >= settings.failuresToExpire {
                due.append((user, count))
            } else {
                next[user] = count
            }
        }
        // One batch: the store commits all of a round's expiries at once.
        let codes = await store.apply(due.map { .expire(user: $0.user.name, ip: $0.user.ip, port: $0.user.port) })
        let dateTime = DateTimeFormat.string(from: Date())
        for ((user, count), code) in zip(due, codes) where code == .ok {
            result.expired.append(user.name)
            console("s> EXPIRE \(user.name): its peer \(user.ip):\(user.port) did not answer \(count) checks in a row")
            operationLog?.submit(OperationRecord(user: user.name, operation: "EXPIRE", dateTime: dateTime))
        }
        failures = next
        return result
    }

}

/// Set once, read from another thread.
private final class CancellationFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    func set() { flag.store(true, ordering: .relaxed) }

    @Sendable func isSet() -> Bool { flag.load(ordering: .relaxed) }
}
