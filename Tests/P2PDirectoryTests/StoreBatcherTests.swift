import Logging
import NIOCore
import NIOPosix
import P2PDirectorySQLite
import P2PProtocol
import P2PTestSupport
import Synchronization
import Testing

@testable import P2PDirectory

/// The batcher answers a LIST_USERS or LIST_CONTENT again from memory only while the store has
/// not changed since it was read (``DirectoryStore/directoryVersion``), and never for a store
/// that cannot tell.
@Suite struct StoreBatcherTests {
    /// The reference store, counting the queries it is asked and, if `versioned`, keeping a
    /// journal of its changes as the SQLite store does.
    final class CountingStore: DirectoryStore {
        let inner = InMemoryDirectoryStore()
        let versioned: Bool
        let journal = DirectoryChangeJournal()
        let queriesRead = Atomic<Int>(0)

        init(versioned: Bool) { self.versioned = versioned }

        var directoryVersion: UInt64? { versioned ? journal.version : nil }

        func changes(since version: UInt64) -> (through: UInt64, changes: DirectoryChanges?) {
            versioned ? journal.changes(since: version) : (0, nil)
        }

        func apply(_ changes: [DirectoryChange]) async -> [ResultCode] {
            let codes = await inner.apply(changes)
            var changed = DirectoryChanges()
            for (change, code) in zip(changes, codes) where code == .ok { changed.add(change) }
            journal.record(changed)
            return codes
        }

        func read(_ queries: [DirectoryQuery]) async -> [Reply] {
            queriesRead.add(queries.count, ordering: .relaxed)
            return await inner.read(queries)
        }

        func registeredUsers() async throws -> [String] { try await inner.registeredUsers() }
        func connectedUsers() async throws -> [ConnectedUser] { try await inner.connectedUsers() }
        func presence(of user: String) async throws -> Presence { try await inner.presence(of: user) }
        func boundKey(of user: String) async throws -> String? { try await inner.boundKey(of: user) }
        func unbind(_ user: String) async throws -> Bool { try await inner.unbind(user) }
        func sessionSecret() async throws -> String { try await inner.sessionSecret() }
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

    /// A batcher on a loop of its own, in front of a counting store.
    static func batcher(versioned: Bool) -> (MultiThreadedEventLoopGroup, CountingStore, StoreBatcher) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let store = CountingStore(versioned: versioned)
        let batcher = StoreBatcher(
            store: store, eventLoop: group.next(), encoder: ReplyEncoder(), logger: Logger(label: "test"))
        return (group, store, batcher)
    }

    static func encoded(_ reply: Reply) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try ReplyEncoder().encode(reply, into: &buffer)
        return buffer
    }

    @Test func repliesAreRememberedUntilTheStoreChanges() async throws {
        let (group, store, batcher) = Self.batcher(versioned: true)
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
        #expect(
            await store.apply([.publish(user: "a", fileName: "two.txt", description: "second", from: nil)]) == [.ok])
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

    @Test func onlyTheChangesThatAffectAReplyForgetIt() async throws {
        let (group, store, batcher) = Self.batcher(versioned: true)
        #expect(
            await store.apply([
                .register(user: "a"), .connect(user: "a", ip: "10.0.0.1", port: "4000"),
                .register(user: "b"), .connect(user: "b", ip: "10.0.0.2", port: "4000"),
            ]) == [.ok, .ok, .ok, .ok])
        let queries: [DirectoryQuery] = [
            .listContent(requester: "a", owner: "a"), .listContent(requester: "a", owner: "b"),
            .listUsers(requester: "a"), .listUsers(requester: "c"),
        ]
        /// Asks every query; returns which of them the store was asked again, and checks that
        /// each reply is the store's.
        func askAll() async throws -> [DirectoryQuery] {
            var read: [DirectoryQuery] = []
            for query in queries {
                let before = store.queriesRead.load(ordering: .relaxed)
                let reply = try await Self.ask(batcher, query)
                #expect(reply == (try await Self.encoded(store.inner.read(query))), "\(query)")
                if store.queriesRead.load(ordering: .relaxed) > before { read.append(query) }
            }
            return read
        }
        #expect(try await askAll() == queries)
        #expect(try await askAll() == [])
        // b's files: only LIST_CONTENTs of b.
        #expect(await store.apply([.publish(user: "b", fileName: "f", description: "d", from: nil)]) == [.ok])
        #expect(try await askAll() == [.listContent(requester: "a", owner: "b")])
        // c registers: only what c asks (it was 1, not registered; now 2, not connected).
        #expect(await store.apply([.register(user: "c")]) == [.ok])
        #expect(try await askAll() == [.listUsers(requester: "c")])
        // b goes offline: every LIST_USERS, and LIST_CONTENTs of b.
        #expect(await store.apply([.disconnect(user: "b")]) == [.ok])
        #expect(
            try await askAll() == [
                .listContent(requester: "a", owner: "b"), .listUsers(requester: "a"), .listUsers(requester: "c"),
            ])
        // a unregisters: everything a asks or owns.
        #expect(await store.apply([.unregister(user: "a")]) == [.ok])
        #expect(try await askAll() == queries)
        try await group.shutdownGracefully()
    }

    /// Random changes and queries: every reply the batcher gives is the one the store gives.
    @Test func rememberedRepliesAreTheStoresOnRandomSequences() async throws {
        let (group, store, batcher) = Self.batcher(versioned: true)
        var random = SplitMix64(seed: 20_261_204)
        let users = ["a", "b", "c"]
        func pick<T>(_ values: [T]) -> T { values[Int(random.next() % UInt64(values.count))] }
        for round in 0..<400 {
            let user = pick(users)
            let change: DirectoryChange =
                switch random.next() % 7 {
                case 0: .register(user: user)
                case 1: .unregister(user: user)
                case 2: .connect(user: user, ip: pick(["10.0.0.1", "10.0.0.2"]), port: "4000")
                case 3: .disconnect(user: user)
                case 4: .delete(user: user, fileName: pick(["f", "g"]))
                case 5: .expire(user: user, ip: "10.0.0.1", port: "4000")
                default: .publish(user: user, fileName: pick(["f", "g"]), description: "r\(round)")
                }
            _ = await store.apply([change])
            for _ in 0..<3 {
                let query: DirectoryQuery =
                    random.next() % 2 == 0
                    ? .listUsers(requester: pick(users)) : .listContent(requester: pick(users), owner: pick(users))
                let reply = try await Self.ask(batcher, query)
                #expect(
                    reply == (try await Self.encoded(store.inner.read(query))), "round \(round): \(change), \(query)")
            }
        }
        // Most were answered from memory.
        #expect(store.queriesRead.load(ordering: .relaxed) < 3 * 400)
        try await group.shutdownGracefully()
    }

    @Test func theJournalForgetsWhatIsTooOld() {
        let journal = DirectoryChangeJournal()
        var change = DirectoryChanges()
        change.add(.register(user: "a"))
        journal.record(DirectoryChanges())
        #expect(journal.version == 0)
        journal.record(change)
        #expect(journal.changes(since: 0).changes?.users == ["a"])
        #expect(journal.changes(since: 1).changes?.isEmpty == true)
        for _ in 0..<(2 * DirectoryChangeJournal.kept) { journal.record(change) }
        let (through, old) = journal.changes(since: 1)
        #expect(through == UInt64(1 + 2 * DirectoryChangeJournal.kept))
        #expect(old == nil)
        #expect(journal.changes(since: through - 1).changes?.users == ["a"])
    }

    @Test func aStoreWithoutAVersionIsAskedEveryTime() async throws {
        let (group, store, batcher) = Self.batcher(versioned: false)
        #expect(
            await store.apply([.register(user: "a"), .connect(user: "a", ip: "10.0.0.1", port: "4000")]) == [.ok, .ok])
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
