import Foundation
import Logging
import P2PDirectory
import P2PProtocol
import PostgresNIO
import Synchronization

// Transactions, deadlines and outages: every piece of work runs through these.
extension PostgresDirectoryStore {
    /// Runs `body` in a transaction on one connection, again (up to ``maxAttempts`` times) when
    /// it fails with a serialization failure or a deadlock. An error in `body` rolls back.
    func transaction<T>(
        _ body: (PostgresConnection) async throws -> sending T
    ) async throws -> sending T {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await client.withConnection { connection in
                    try await connection.query("BEGIN", logger: logger)
                    do {
                        let value = try await body(connection)
                        try await connection.query("COMMIT", logger: logger)
                        return value
                    } catch {
                        _ = try? await connection.query("ROLLBACK", logger: logger)
                        throw error
                    }
                }
            } catch  where attempt < Self.maxAttempts && Self.isRetryable(error) {
                // A little random, so that the transactions that collided do not collide again.
                try await Task.sleep(for: .milliseconds(Int.random(in: 1...(2 << min(attempt, 6)))))
            }
        }
    }

    /// Runs `body`, giving up after `timeout`: the caller gets ``PostgresStoreError/timedOut``
    /// and `body`'s task is cancelled and left to end by itself (a database that stopped
    /// answering may never answer a query already sent, so nothing waits for it).
    static func withDeadline<T: Sendable>(
        _ timeout: Duration, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let race = DeadlineRace<T>()
        return try await withCheckedThrowingContinuation { continuation in
            race.start(
                continuation,
                work: Task {
                    do {
                        race.finish(.success(try await body()))
                    } catch {
                        race.finish(.failure(error))
                    }
                },
                timer: Task {
                    try? await Task.sleep(for: timeout)
                    if !Task.isCancelled { race.finish(.failure(PostgresStoreError.timedOut)) }
                })
        }
    }

    func succeeded() {
        let wasFailing = state.withLock { state in
            defer { state.failing = false }
            return state.failing
        }
        if wasFailing { logger.notice("PostgreSQL at \(url) answers again") }
    }

    func failed(_ error: any Error, doing what: String) {
        let wasFailing = state.withLock { state in
            defer { state.failing = true }
            return state.failing
        }
        guard !wasFailing else { return }
        logger.error(
            """
            PostgreSQL at \(url) failed (\(what)): \(Self.describe(error)); requests get their error codes until \
            it answers
            """
        )
    }

    static func sqlState(of error: any Error) -> String? {
        if let error = error as? PSQLError { return error.serverInfo?[.sqlState] }
        return nil
    }

    /// Serialization failure and deadlock: the transaction did nothing and can run again.
    static func isRetryable(_ error: any Error) -> Bool {
        ["40001", "40P01"].contains(sqlState(of: error))
    }

    /// Two servers creating one table at the same moment: one of them gets a unique violation
    /// on the system catalog, or finds the table there.
    static func isConcurrentCreation(_ error: any Error) -> Bool {
        ["23505", "42P07"].contains(sqlState(of: error))
    }

    /// A readable line for an error (postgres-nio's own description hides everything).
    static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let info = error.serverInfo {
                return "\(info[.message] ?? "error") (SQLSTATE \(info[.sqlState] ?? "?"))"
            }
            if let underlying = error.underlying { return "\(error.code): \(underlying)" }
            return "\(error.code)"
        }
        return "\(error)"
    }

    /// Runs `sql` and returns how many rows it gave back.
    static func count(_ connection: PostgresConnection, _ sql: PostgresQuery, logger: Logger) async throws -> Int {
        var count = 0
        for try await _ in try await connection.query(sql, logger: logger) { count += 1 }
        return count
    }
}

/// The first of a piece of work and its timer to finish resumes the caller; the other is
/// cancelled.
final class DeadlineRace<T: Sendable>: Sendable {
    private struct Parts {
        var continuation: CheckedContinuation<T, any Error>?
        var result: Result<T, any Error>?
        var work: Task<Void, Never>?
        var timer: Task<Void, Never>?
    }
    private let parts = Mutex(Parts())

    func start(_ continuation: CheckedContinuation<T, any Error>, work: Task<Void, Never>, timer: Task<Void, Never>) {
        let early = parts.withLock { parts -> Result<T, any Error>? in
            parts.work = work
            parts.timer = timer
            if let result = parts.result { return result }
            parts.continuation = continuation
            return nil
        }
        if let early {
            work.cancel()
            timer.cancel()
            continuation.resume(with: early)
        }
    }

    func finish(_ result: Result<T, any Error>) {
        let taken = parts.withLock {
            parts -> (CheckedContinuation<T, any Error>?, Task<Void, Never>?, Task<Void, Never>?)? in
            guard parts.result == nil else { return nil }
            parts.result = result
            defer { parts.continuation = nil }
            return (parts.continuation, parts.work, parts.timer)
        }
        guard let (continuation, work, timer) = taken else { return }
        work?.cancel()
        timer?.cancel()
        continuation?.resume(with: result)
    }
}
