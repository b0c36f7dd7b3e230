import Foundation
import P2PProtocol
import Synchronization

/// A directory kept only in memory: ``DirectoryState`` behind a lock. Nothing survives the
/// process, so the server never uses it for a real directory; it is the rules' reference
/// implementation, which the rule suite runs alongside every durable store.
public final class InMemoryDirectoryStore: DirectoryStore {
    private let state = Mutex(DirectoryState())
    private let closed = Atomic<Bool>(false)
    private let secret = Data((0..<32).map { _ in UInt8.random(in: .min ... .max) }).base64EncodedString()

    public init() {}

    public func apply(_ changes: [DirectoryChange]) async -> [P2PProtocol.ResultCode] {
        if closed.load(ordering: .relaxed) { return changes.map(\.operation.otherErrorCode) }
        return state.withLock { state in changes.map { state.apply($0) } }
    }

    public func read(_ queries: [DirectoryQuery]) async -> [Reply] {
        if closed.load(ordering: .relaxed) { return queries.map { .status($0.operation.otherErrorCode) } }
        return state.withLock { state in
            queries.map { query in
                switch query {
                case .listUsers(let requester): return state.listUsers(requester: requester)
                case .listContent(let requester, let owner):
                    return state.listContent(requester: requester, owner: owner)
                case .search(let requester, let query): return state.search(requester: requester, query: query)
                }
            }
        }
    }

    public func registeredUsers() async throws -> [String] {
        state.withLock { $0.userNames }
    }

    public func connectedUsers() async throws -> [ConnectedUser] {
        state.withLock { $0.connectedUsers }
    }

    public func presence(of user: String) async throws -> Presence {
        state.withLock { $0.presence(of: user) }
    }

    public func boundKey(of user: String) async throws -> String? {
        state.withLock { $0.boundKey(of: user) }
    }

    public func unbind(_ user: String) async throws -> Bool {
        state.withLock { $0.unbind(user) }
    }

    public func sessionSecret() async throws -> String { secret }

    public func overview() async throws -> DirectoryOverview {
        state.withLock { $0.overview }
    }

    public func files(of owner: String) async throws -> [PublishedFile]? {
        state.withLock { $0.files(of: owner) }
    }

    public func search(_ query: String) async throws -> [SearchHit] {
        state.withLock { $0.search(query) }
    }

    public func close() async throws {
        closed.store(true, ordering: .relaxed)
    }
}
