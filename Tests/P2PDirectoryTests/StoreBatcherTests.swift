import Logging
import NIOCore
import NIOPosix
import P2PProtocol
import P2PTestSupport
import Synchronization
import Testing

@testable import P2PDirectory
import P2PDirectorySQLite

/// The batcher answers a LIST_USERS or LIST_CONTENT again from memory only while the store has
/// not changed since it was read (``DirectoryStore/directoryVersion``), and never for a store
/// that cannot tell.
@Suite struct StoreBatcherTests {
    /// The reference store, counting the queries it is asked and, if `versioned`, giving a
    /// version that grows with every batch that changes something.
    final class CountingStore: DirectoryStore {
        let inner = InMemoryDirectoryStore()
        let versioned: Bool
        let version = Atomic<UInt64>(0)
        let queriesRead = Atomic<Int>(0)

        init(versioned: Bool) { self.versioned = versioned }

        var directoryVersion: UInt64? { versioned ? version.load(ordering: .acquiring) : nil }

        func apply(_ changes: [DirectoryChange]) async -> [ResultCode] {
            let codes = await inner.apply(changes)
            if codes.contains(.ok) { version.add(1, ordering: .releasing) }
            return codes
        }

        func read(_ queries: [DirectoryQuery]) async -> [Reply] {
            queriesRead.add(queries.count, ordering: .relaxed)
            return await inner.read(queries)
        }

        func registeredUsers() async throws -> [String] { try await inner.registeredUsers() }
        func connectedUsers() async throws -> [ConnectedUser] { try await inner.connectedUsers() }
        func presence(of user: String) async throws -> Presence { try await inner.presence(of: user) }
        func overview() async throws -> DirectoryOverview { try await inner.overview() }
        func files(of owner: String) async throws -> [PublishedFile]? { try await inner.files(of: owner) }
        func search(_ query: String) async throws -> [SearchHit] { try await inner.search(query) }
        func close() async throws { try await inner.close() }
    }

    /// The encoded reply the batcher gives `query`, on its loop.
    static func ask(_ batcher: StoreBatcher, _ query: DirectoryQuery) async throws -> ByteBuffer {
        try await withCheckedThrowingContinuation { continuation in
            batcher.eventLoop.execute {
                batcher.submit(.query(query)) { reply, _ in continuation.resume(returning: reply) }
            }
        }
    }

    static func encoded(_ reply: Reply) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try ReplyEncoder().encode(reply, into: &buffer)
        return buffer
    }

    @Test func repliesAreRememberedUntilTheStoreChanges() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let store = CountingStore(versioned: true)
        let batcher = StoreBatcher(
            store: store, eventLoop: group.next(), encoder: ReplyEncoder(), logger: Logger(label: "test"))
        #expect(
            await store.apply([
                .register(user: "a"), .connect(user: "a", ip: "10.0.0.1", port: "4000"),
                .publish(user: "a", fileName: "one.txt", description: "first", from: nil),
            ]) == [.ok, .ok, .ok])
        let content = DirectoryQuery.listContent(requester: "a", owner: "a")
        let users = DirectoryQuery.listUsers(requester: "a")
        let first = try await Self.ask(batcher, content)
        #expect(first == (try await Self.encoded(store.inner.read(content))))
        _ = try await Self.ask(batcher, users)
        #expect(store.queriesRead.load(ordering: .relaxed) == 2)

        // Asked again before anything changed: from memory.
        #expect(try await Self.ask(batcher, content) == first)
        _ = try await Self.ask(batcher, users)
        #expect(store.queriesRead.load(ordering: .relaxed) == 2)

        // A change: read again, and the reply has the new file.
        #expect(await store.apply([.publish(user: "a", fileName: "two.txt", description: "second", from: nil)]) == [.ok])
        let after = try await Self.ask(batcher, content)
        #expect(after == (try await Self.encoded(store.inner.read(content))))
        #expect(after != first)
        #expect(store.queriesRead.load(ordering: .relaxed) == 3)

        // A change that changed nothing (refused) keeps what is remembered.
        #expect(await store.apply([.register(user: "a")]) == [1])
        #expect(try await Self.ask(batcher, content) == after)
        #expect(store.queriesRead.load(ordering: .relaxed) == 3)
        try await group.shutdownGracefully()
    }

    @Test func aStoreWithoutAVersionIsAskedEveryTime() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let store = CountingStore(versioned: false)
        let batcher = StoreBatcher(
            store: store, eventLoop: group.next(), encoder: ReplyEncoder(), logger: Logger(label: "test"))
        #expect(await store.apply([.register(user: "a"), .connect(user: "a", ip: "10.0.0.1", port: "4000")]) == [.ok, .ok])
        let query = DirectoryQuery.listUsers(requester: "a")
        let first = try await Self.ask(batcher, query)
        #expect(try await Self.ask(batcher, query) == first)
        #expect(store.queriesRead.load(ordering: .relaxed) == 2)
        try await group.shutdownGracefully()
    }

    /// The SQLite store's version grows with every commit that changed something, before the
    /// changes are answered, and not for a batch that changed nothing.
    @Test func theSQLiteStoreVersionGrowsWithEveryChange() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let store = try SQLiteDirectoryStore(dataDirectory: folder.path)
        let start = try #require(store.directoryVersion)
        #expect(await store.apply([.register(user: "a"), .register(user: "b")]) == [.ok, .ok])
        let registered = try #require(store.directoryVersion)
        #expect(registered > start)
        #expect(await store.apply([.register(user: "a"), .connect(user: "c", ip: "10.0.0.1", port: "1")]) == [1, 1])
        #expect(store.directoryVersion == registered)
        #expect(await store.apply([.connect(user: "a", ip: "10.0.0.1", port: "4000")]) == [.ok])
        #expect(try #require(store.directoryVersion) > registered)
        try await store.close()
    }
}
