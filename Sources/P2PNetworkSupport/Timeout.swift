/// Runs `body`; throws `error` if it has not finished after `timeout` (and cancels it).
public func withTimeout<T: Sendable>(
    _ timeout: Duration,
    error: any Error & Sendable,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw error
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
