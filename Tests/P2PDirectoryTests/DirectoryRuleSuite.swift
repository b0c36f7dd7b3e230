import Foundation
import Logging
import P2PDirectoryStores
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PDirectory
@testable import P2PDirectoryPostgres
@testable import P2PDirectorySQLite

/// A store the rule suite runs on. To hold a new store implementation to the rules of
/// PROTOCOL.md section 2, add it to ``all``: every case below then runs on it too.
struct StoreUnderTest: Sendable, CustomTestStringConvertible {
    let name: String
    let open: @Sendable (TemporaryDirectory) async throws -> any DirectoryStore

    static let all: [StoreUnderTest] = [
        StoreUnderTest(name: "in-memory reference") { _ in InMemoryDirectoryStore() },
        StoreUnderTest(name: "SQLite") { folder in
            try await DirectoryStoreLocation.sqlite(dataDirectory: folder.path).open(logger: Logger(label: "test"))
        },
        // Every prefix searched gets a bitmap (built in the background, so some searches use
        // it and some do not): the answers must be the same either way.
        StoreUnderTest(name: "SQLite, every prefix with a bitmap") { folder in
            try SearchBitmapTests.store(in: folder, .init(threshold: 1))
        },
        // A fresh database on the test process's private PostgreSQL server.
        StoreUnderTest(name: "PostgreSQL") { _ in
            try await DirectoryStoreLocation.postgres(PostgresServer.shared().newDatabase())
                .open(logger: Logger(label: "test"))
        },
    ]

    var testDescription: String { name }
}

/// One step of a rule case: a change and the code it must get, or a query and its reply.
enum RuleStep: Sendable {
    case change(DirectoryChange, ResultCode)
    case query(DirectoryQuery, Reply)
}

/// A sequence of steps that every store must answer exactly so.
struct RuleCase: Sendable, CustomTestStringConvertible {
    let name: String
    let steps: [RuleStep]
    var testDescription: String { name }
}

private func register(_ user: String) -> RuleStep { .change(.register(user: user), .ok) }
private func connect(_ user: String, _ ip: String = "10.0.0.1", _ port: String = "4000") -> RuleStep {
    .change(.connect(user: user, ip: ip, port: port), .ok)
}
private func publish(_ user: String, _ file: String, _ description: String = "d") -> RuleStep {
    .change(.publish(user: user, fileName: file, description: description), .ok)
}

extension RuleCase {
    /// Every code of every operation, and the lists they leave behind.
    static let all: [RuleCase] = [
        RuleCase(
            name: "REGISTER: 0 new, 1 taken, 2 empty name",
            steps: [
                .change(.register(user: "alice"), 0),
                .change(.register(user: "alice"), 1),
                .change(.register(user: ""), 2),
                .change(.register(user: "Alice"), 0),
            ]),
        RuleCase(
            name: "UNREGISTER: 0 registered, 1 unknown; takes the user's files and address with it",
            steps: [
                .change(.unregister(user: "alice"), 1),
                register("alice"), connect("alice"), publish("alice", "a.txt"), register("bob"), connect("bob"),
                .change(.unregister(user: "alice"), 0),
                .change(.unregister(user: "alice"), 1),
                .query(
                    .listUsers(requester: "bob"), .users([ConnectedUser(name: "bob", ip: "10.0.0.1", port: "4000")])),
                register("alice"),
                .query(.listContent(requester: "bob", owner: "alice"), .content([])),
                .query(.listUsers(requester: "alice"), .status(2)),
            ]),
        RuleCase(
            name: "CONNECT: 0, 1 unknown, 2 already connected, 3 bad port",
            steps: [
                .change(.connect(user: "alice", ip: "10.0.0.1", port: "4000"), 1),
                .change(.connect(user: "alice", ip: "10.0.0.1", port: "0"), 1),
                register("alice"),
                .change(.connect(user: "alice", ip: "10.0.0.1", port: "0"), 3),
                .change(.connect(user: "alice", ip: "10.0.0.1", port: "65536"), 3),
                .change(.connect(user: "alice", ip: "10.0.0.1", port: "-1"), 3),
                .change(.connect(user: "alice", ip: "10.0.0.1", port: "40 0"), 3),
                .change(.connect(user: "alice", ip: "10.0.0.1", port: ""), 3),
                .change(.connect(user: "alice", ip: "10.0.0.1", port: "１２"), 3),
                .change(.connect(user: "alice", ip: "10.0.0.1", port: "65535"), 0),
                .change(.connect(user: "alice", ip: "10.0.0.2", port: "4001"), 2),
                .change(.connect(user: "alice", ip: "10.0.0.2", port: "0"), 3),
                .query(
                    .listUsers(requester: "alice"),
                    .users([ConnectedUser(name: "alice", ip: "10.0.0.1", port: "65535")])),
            ]),
        RuleCase(
            name: "DISCONNECT: 0, 1 unknown, 2 not connected; files stay",
            steps: [
                .change(.disconnect(user: "alice"), 1),
                register("alice"),
                .change(.disconnect(user: "alice"), 2),
                connect("alice"), publish("alice", "kept.txt", "still here"),
                .change(.disconnect(user: "alice"), 0),
                .change(.disconnect(user: "alice"), 2),
                .query(.listUsers(requester: "alice"), .status(2)),
                connect("alice", "10.0.0.9", "5000"),
                .query(
                    .listUsers(requester: "alice"), .users([ConnectedUser(name: "alice", ip: "10.0.0.9", port: "5000")])
                ),
                .query(
                    .listContent(requester: "alice", owner: "alice"),
                    .content([PublishedFile(name: "kept.txt", description: "still here")])),
            ]),
        RuleCase(
            name: "PUBLISH: 0, 1 unknown, 2 not connected, 3 already published, 4 bad name",
            steps: [
                .change(.publish(user: "alice", fileName: "f", description: "d"), 1),
                .change(.publish(user: "alice", fileName: "", description: "d"), 1),
                register("alice"),
                .change(.publish(user: "alice", fileName: "f", description: "d"), 2),
                .change(.publish(user: "alice", fileName: "", description: "d"), 2),
                connect("alice"),
                .change(.publish(user: "alice", fileName: "", description: "d"), 4),
                .change(.publish(user: "alice", fileName: "two words", description: "d"), 4),
                .change(.publish(user: "alice", fileName: "tab\tname", description: "d"), 4),
                .change(.publish(user: "alice", fileName: "f", description: "first"), 0),
                .change(.publish(user: "alice", fileName: "f", description: "other"), 3),
                .change(.publish(user: "alice", fileName: "F", description: ""), 0),
                .change(.publish(user: "alice", fileName: "naïve-日本.txt", description: "ünïcödé ok"), 0),
                register("bob"), connect("bob"),
                .change(.publish(user: "bob", fileName: "f", description: "bob's own"), 0),
                .query(
                    .listContent(requester: "bob", owner: "alice"),
                    .content([
                        PublishedFile(name: "f", description: "first"), PublishedFile(name: "F", description: ""),
                        PublishedFile(name: "naïve-日本.txt", description: "ünïcödé ok"),
                    ])),
            ]),
        RuleCase(
            name: "DELETE: 0, 1 unknown, 2 not connected, 3 not published; publish again goes last",
            steps: [
                .change(.delete(user: "alice", fileName: "f"), 1),
                register("alice"),
                .change(.delete(user: "alice", fileName: "f"), 2),
                connect("alice"),
                .change(.delete(user: "alice", fileName: "f"), 3),
                publish("alice", "f"), publish("alice", "g"),
                .change(.delete(user: "alice", fileName: "f"), 0),
                .change(.delete(user: "alice", fileName: "f"), 3),
                publish("alice", "f", "again"),
                .query(
                    .listContent(requester: "alice", owner: "alice"),
                    .content([
                        PublishedFile(name: "g", description: "d"), PublishedFile(name: "f", description: "again"),
                    ])),
                .change(.disconnect(user: "alice"), 0),
                .change(.delete(user: "alice", fileName: "f"), 2),
            ]),
        RuleCase(
            name: "LIST_USERS: 0 connected users by name, 1 unknown, 2 not connected",
            steps: [
                .query(.listUsers(requester: "alice"), .status(1)),
                register("zed"), register("alice"), register("bob"), register("Carol"),
                .query(.listUsers(requester: "alice"), .status(2)),
                connect("zed", "1.1.1.1", "1"), connect("alice", "2.2.2.2", "2"), connect("Carol", "3.3.3.3", "3"),
                .query(
                    .listUsers(requester: "alice"),
                    .users([
                        ConnectedUser(name: "Carol", ip: "3.3.3.3", port: "3"),
                        ConnectedUser(name: "alice", ip: "2.2.2.2", port: "2"),
                        ConnectedUser(name: "zed", ip: "1.1.1.1", port: "1"),
                    ])),
                .query(.listUsers(requester: "bob"), .status(2)),
            ]),
        RuleCase(
            name: "LIST_CONTENT: 0 in publishing order, 1 unknown, 2 not connected, 3 unknown owner",
            steps: [
                .query(.listContent(requester: "alice", owner: "bob"), .status(1)),
                register("alice"),
                .query(.listContent(requester: "alice", owner: "bob"), .status(2)),
                .query(.listContent(requester: "alice", owner: "alice"), .status(2)),
                connect("alice"),
                .query(.listContent(requester: "alice", owner: "bob"), .status(3)),
                register("bob"),
                .query(.listContent(requester: "alice", owner: "bob"), .content([])),
                connect("bob"), publish("bob", "zeta", "last letter"), publish("bob", "alpha", "first letter"),
                .change(.disconnect(user: "bob"), 0),
                .query(
                    .listContent(requester: "alice", owner: "bob"),
                    .content([
                        PublishedFile(name: "zeta", description: "last letter"),
                        PublishedFile(name: "alpha", description: "first letter"),
                    ])),
            ]),
        RuleCase(
            name: "owner check: a connected user is changed only from the address it connected from",
            steps: [
                register("alice"), register("bob"), connect("alice", "10.0.0.1"),
                .change(.publish(user: "alice", fileName: "f", description: "d", from: "10.0.0.2"), 4),
                .change(.publish(user: "alice", fileName: "f", description: "d", from: "10.0.0.1"), 0),
                .change(.publish(user: "alice", fileName: "g", description: "no check"), 0),
                .change(.publish(user: "alice", fileName: "", description: "d", from: "10.0.0.2"), 4),
                .change(.delete(user: "alice", fileName: "f", from: "10.0.0.2"), 4),
                .change(.delete(user: "alice", fileName: "nothing", from: "10.0.0.2"), 4),
                .change(.disconnect(user: "alice", from: "10.0.0.2"), 3),
                .change(.unregister(user: "alice", from: "10.0.0.2"), 2),
                .change(.connect(user: "bob", ip: "10.0.0.2", port: "5000"), 0),
                .query(
                    .listUsers(requester: "bob"),
                    .users([
                        ConnectedUser(name: "alice", ip: "10.0.0.1", port: "4000"),
                        ConnectedUser(name: "bob", ip: "10.0.0.2", port: "5000"),
                    ])),
                .query(
                    .listContent(requester: "bob", owner: "alice"),
                    .content([
                        PublishedFile(name: "f", description: "d"), PublishedFile(name: "g", description: "no check"),
                    ])),
                .change(.delete(user: "alice", fileName: "f", from: "10.0.0.1"), 0),
                .change(.disconnect(user: "alice", from: "10.0.0.1"), 0),
                // Not connected: no address to check against.
                .change(.publish(user: "alice", fileName: "h", description: "d", from: "10.0.0.2"), 2),
                .change(.disconnect(user: "alice", from: "10.0.0.2"), 2),
                .change(.unregister(user: "alice", from: "10.0.0.2"), 0),
                .change(.unregister(user: "alice", from: "10.0.0.2"), 1),
                .change(.disconnect(user: "nobody", from: "10.0.0.2"), 1),
                .change(.unregister(user: "bob", from: "10.0.0.2"), 0),
            ]),
        RuleCase(
            name: "expire: only a user still connected at that exact address goes offline; files stay",
            steps: [
                .change(.expire(user: "a", ip: "1.1.1.1", port: "4000"), 1),
                register("a"),
                .change(.expire(user: "a", ip: "1.1.1.1", port: "4000"), 2),
                connect("a", "1.1.1.1", "4000"), publish("a", "f"),
                .change(.expire(user: "a", ip: "1.1.1.1", port: "4001"), 2),
                .change(.expire(user: "a", ip: "2.2.2.2", port: "4000"), 2),
                .change(.expire(user: "a", ip: "1.1.1.1", port: "4000"), 0),
                .change(.expire(user: "a", ip: "1.1.1.1", port: "4000"), 2),
                .query(.listUsers(requester: "a"), .status(2)),
                connect("a", "1.1.1.1", "4002"),
                .query(
                    .listContent(requester: "a", owner: "a"), .content([PublishedFile(name: "f", description: "d")])),
            ]),
        RuleCase(
            name: "SEARCH: 1 unknown, 2 not connected, 3 empty query; word prefixes, every word, any case",
            steps: [
                .query(.search(requester: "alice", query: "x"), .status(1)),
                register("alice"),
                .query(.search(requester: "alice", query: "x"), .status(2)),
                connect("alice"),
                .query(.search(requester: "alice", query: ""), .status(3)),
                .query(.search(requester: "alice", query: " -- *. "), .status(3)),
                .query(.search(requester: "alice", query: "lect"), .hits([])),
                publish("alice", "lecture-notes.pdf", "Week 1 of Algebra"),
                publish("alice", "holiday_photos.zip", "beach and MOUNTAINS"),
                publish("alice", "naïve-bayes.txt", "Über classifier"),
                .query(
                    .search(requester: "alice", query: "lect"),
                    .hits([SearchHit(owner: "alice", name: "lecture-notes.pdf", description: "Week 1 of Algebra")])),
                .query(
                    .search(requester: "alice", query: "NOTES alg"),
                    .hits([SearchHit(owner: "alice", name: "lecture-notes.pdf", description: "Week 1 of Algebra")])),
                .query(.search(requester: "alice", query: "notes beach"), .hits([])),
                .query(.search(requester: "alice", query: "ecture"), .hits([])),
                .query(
                    .search(requester: "alice", query: "mount photo"),
                    .hits([SearchHit(owner: "alice", name: "holiday_photos.zip", description: "beach and MOUNTAINS")])),
                .query(
                    .search(requester: "alice", query: "NAÏ über"),
                    .hits([SearchHit(owner: "alice", name: "naïve-bayes.txt", description: "Über classifier")])),
                .query(
                    .search(requester: "alice", query: "naive uber"),
                    .hits([SearchHit(owner: "alice", name: "naïve-bayes.txt", description: "Über classifier")])),
                // FTS syntax in a query is only text.
                .query(.search(requester: "alice", query: "lect OR beach"), .hits([])),
                .query(.search(requester: "alice", query: "\"lect\" NEAR(x) *"), .hits([])),
                .query(
                    .search(requester: "alice", query: "\"lect"),
                    .hits([SearchHit(owner: "alice", name: "lecture-notes.pdf", description: "Week 1 of Algebra")])),
                .change(.delete(user: "alice", fileName: "lecture-notes.pdf"), 0),
                .query(.search(requester: "alice", query: "lect"), .hits([])),
            ]),
        RuleCase(
            name: "SEARCH: online owners first, each in publishing order; files of unregistered users gone",
            steps: [
                register("me"), connect("me"), register("off"), connect("off"), register("on"), connect("on"),
                register("gone"), connect("gone"),
                publish("off", "song-1.mp3"), publish("on", "song-2.mp3"), publish("gone", "song-3.mp3"),
                publish("off", "song-4.mp3"), publish("on", "song-5.mp3"),
                .change(.disconnect(user: "off"), 0),
                .change(.unregister(user: "gone"), 0),
                .query(
                    .search(requester: "me", query: "song"),
                    .hits([
                        SearchHit(owner: "on", name: "song-2.mp3", description: "d"),
                        SearchHit(owner: "on", name: "song-5.mp3", description: "d"),
                        SearchHit(owner: "off", name: "song-1.mp3", description: "d"),
                        SearchHit(owner: "off", name: "song-4.mp3", description: "d"),
                    ])),
            ]),
        RuleCase(
            name: "SEARCH: a prefix of more than 3 letters finds every word it starts, however many",
            steps: [
                register("me"), connect("me"),
                publish("me", "lecture-1.pdf", "week one"), publish("me", "lecturer.txt", "notes"),
                publish("me", "lect.txt", "lectern"), publish("me", "other.txt", "LECTURES Über"),
                .query(
                    .search(requester: "me", query: "lecture"),
                    .hits([
                        SearchHit(owner: "me", name: "lecture-1.pdf", description: "week one"),
                        SearchHit(owner: "me", name: "lecturer.txt", description: "notes"),
                        SearchHit(owner: "me", name: "other.txt", description: "LECTURES Über"),
                    ])),
                .query(.search(requester: "me", query: "lecturers"), .hits([])),
                .query(
                    .search(requester: "me", query: "uber lectu"),
                    .hits([SearchHit(owner: "me", name: "other.txt", description: "LECTURES Über")])),
            ]
                // 300 words starting with "zqxywvu" (longer than the prefix lists): more than the expansion takes.
                + (0..<300).map { publish("me", "zqxywvu\($0).bin", "d") }
                + [
                    .query(
                        .search(requester: "me", query: "ZQXYWVU"),
                        .hits((0..<100).map { SearchHit(owner: "me", name: "zqxywvu\($0).bin", description: "d") })),
                    .query(
                        .search(requester: "me", query: "zqxywvu29"),
                        .hits(
                            ([29] + Array(290..<300)).map {
                                SearchHit(owner: "me", name: "zqxywvu\($0).bin", description: "d")
                            }
                        )),
                ]),
        RuleCase(
            name: "SEARCH: at most 100 hits",
            steps: [register("me"), connect("me")]
                + (0..<130).map { publish("me", "file\($0).txt", "many") }
                + [
                    .query(
                        .search(requester: "me", query: "many"),
                        .hits((0..<100).map { SearchHit(owner: "me", name: "file\($0).txt", description: "many") }))
                ]),
        RuleCase(
            name: "keys: a keyed REGISTER binds; then only that key changes the user, from any address",
            steps: [
                .change(.keyed(.register(user: "alice"), key: "K1"), 0),
                // Plain, from anywhere (the owner check is no help for an offline user).
                .change(.connect(user: "alice", ip: "10.0.0.9", port: "9999"), 3),
                .change(.publish(user: "alice", fileName: "x", description: "d"), 4),
                .change(.unregister(user: "alice"), 2),
                .change(.register(user: "alice"), 1),
                // Another key.
                .change(.keyed(.connect(user: "alice", ip: "10.0.0.1", port: "4000"), key: "K2"), 3),
                .change(.keyed(.connect(user: "alice", ip: "10.0.0.1", port: "4000"), key: "K1"), 0),
                // Her key from another address passes the owner check's place.
                .change(
                    .keyed(.publish(user: "alice", fileName: "a.txt", description: "d", from: "10.0.0.2"), key: "K1"), 0
                ),
                .change(.publish(user: "alice", fileName: "b.txt", description: "d", from: "10.0.0.1"), 4),
                .change(.delete(user: "alice", fileName: "a.txt", from: "10.0.0.1"), 4),
                .change(.disconnect(user: "alice", from: "10.0.0.1"), 3),
                // The server's own EXPIRE needs no key.
                .change(.expire(user: "alice", ip: "10.0.0.1", port: "4000"), 0),
                .query(
                    .listContent(requester: "alice", owner: "alice"), .status(2)),
                .change(.keyed(.unregister(user: "alice", from: "10.0.0.7"), key: "K1"), 0),
                // Gone with its binding: the name is free for anyone.
                .change(.register(user: "alice"), 0),
                .change(.connect(user: "alice", ip: "10.0.0.9", port: "1"), 0),
            ]),
        RuleCase(
            name: "keys: an unbound user keeps the address rules and is bound by a keyed CONNECT they accept",
            steps: [
                register("bob"),
                // A keyed REGISTER of a name already there binds nothing.
                .change(.keyed(.register(user: "bob"), key: "K1"), 1),
                .change(.connect(user: "bob", ip: "10.0.0.1", port: "4000"), 0),
                .change(.publish(user: "bob", fileName: "a.txt", description: "d", from: "10.0.0.2"), 4),
                // A keyed CONNECT the rules refuse (bob is online) binds nothing either.
                .change(.keyed(.connect(user: "bob", ip: "10.0.0.2", port: "4000"), key: "K2"), 2),
                .change(.disconnect(user: "bob", from: "10.0.0.1"), 0),
                .change(.keyed(.connect(user: "bob", ip: "10.0.0.3", port: "4000"), key: "K3"), 0),
                .change(.disconnect(user: "bob", from: "10.0.0.3"), 3),
                .change(.keyed(.disconnect(user: "bob"), key: "K2"), 3),
                .change(.keyed(.disconnect(user: "bob"), key: "K3"), 0),
            ]),
        RuleCase(
            name: "names and values are data, never SQL or patterns",
            steps: [
                register("'; DROP TABLE user; --"), register("%"), register("_"),
                .change(.register(user: "a%"), 0),
                connect("%", "10.0.0.1", "1"),
                .change(.publish(user: "%", fileName: "x'y", description: "\"quoted\" ' ; -- %"), 0),
                .query(.listContent(requester: "%", owner: "_"), .content([])),
                .query(
                    .listContent(requester: "%", owner: "%"),
                    .content([PublishedFile(name: "x'y", description: "\"quoted\" ' ; -- %")])),
                .change(.delete(user: "%", fileName: "x%"), 3),
                .change(.unregister(user: "_"), 0),
                .change(.unregister(user: "_"), 1),
                .query(.listUsers(requester: "%"), .users([ConnectedUser(name: "%", ip: "10.0.0.1", port: "1")])),
            ]),
    ]
}

/// PROTOCOL.md section 2 as sequences of changes and queries, run on every store.
@Suite struct DirectoryRuleSuite {
    @Test(arguments: StoreUnderTest.all, RuleCase.all)
    func rule(_ store: StoreUnderTest, _ rule: RuleCase) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let directory = try await store.open(folder)
        for (index, step) in rule.steps.enumerated() {
            switch step {
            case .change(let change, let expected):
                let code = await directory.apply(change)
                #expect(code == expected, "step \(index): \(change)")
            case .query(let query, let expected):
                let reply = await directory.read(query)
                #expect(reply == expected, "step \(index): \(query)")
            }
        }
        try await directory.close()
    }

    /// The key a user is bound to is read back, and the operator's unbind frees the name for
    /// the next keyed CONNECT.
    @Test(arguments: StoreUnderTest.all)
    func unbindFreesTheNameForTheNextKey(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let directory = try await store.open(folder)
        #expect(await directory.apply(.keyed(.register(user: "alice"), key: "K1")) == 0)
        #expect(try await directory.boundKey(of: "alice") == "K1")
        #expect(try await directory.boundKey(of: "nobody") == nil)
        #expect(try await directory.unbind("alice"))
        #expect(try await !directory.unbind("nobody"))
        #expect(try await directory.boundKey(of: "alice") == nil)
        #expect(await directory.apply(.keyed(.connect(user: "alice", ip: "10.0.0.1", port: "1"), key: "K2")) == 0)
        #expect(try await directory.boundKey(of: "alice") == "K2")
        #expect(await directory.apply(.keyed(.disconnect(user: "alice"), key: "K1")) == 3)
        try await directory.close()
    }

    /// A batch is decided in order, each change seeing the ones before it, exactly as if they
    /// had come one by one.
    @Test(arguments: StoreUnderTest.all)
    func batchIsDecidedInOrder(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let directory = try await store.open(folder)
        let codes = await directory.apply([
            .register(user: "a"), .connect(user: "a", ip: "1.2.3.4", port: "9"),
            .publish(user: "a", fileName: "f", description: "d"), .register(user: "a"),
            .publish(user: "a", fileName: "f", description: "d"), .unregister(user: "a"),
            .delete(user: "a", fileName: "f"), .register(user: "a"),
        ])
        #expect(codes == [0, 0, 0, 1, 3, 0, 1, 0])
        let replies = await directory.read([.listUsers(requester: "a"), .listContent(requester: "b", owner: "a")])
        #expect(replies == [.status(2), .status(1)])
        try await directory.close()
    }

    /// REGISTERs in a row (which a store may make in one statement) get the codes they get one
    /// by one: a repeat is taken, an empty name is refused, an existing name is taken.
    @Test(arguments: StoreUnderTest.all)
    func registersInARow(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let directory = try await store.open(folder)
        #expect(await directory.apply(.register(user: "old")) == .ok)
        let codes = await directory.apply([
            .register(user: "x"), .register(user: ""), .register(user: "x"), .register(user: "old"),
            .register(user: "y"), .unregister(user: "x"), .register(user: "x"), .register(user: "x"),
        ])
        #expect(codes == [0, 2, 1, 1, 0, 0, 0, 1])
        #expect(try await directory.registeredUsers() == ["old", "x", "y"])
        try await directory.close()
    }

    /// A batch of reads of every kind, several LIST_CONTENTs among them (which a store may
    /// answer together, reading an owner's files once): each gets its own answer, the
    /// requester checked for every one.
    @Test(arguments: StoreUnderTest.all)
    func batchOfReads(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let directory = try await store.open(folder)
        _ = await directory.apply([
            .register(user: "a"), .register(user: "b"), .register(user: "off"),
            .connect(user: "a", ip: "1.1.1.1", port: "1"), .connect(user: "b", ip: "2.2.2.2", port: "2"),
            .publish(user: "b", fileName: "b1", description: "one"),
            .publish(user: "b", fileName: "b2", description: "two"),
            .publish(user: "a", fileName: "a1", description: "x"),
        ])
        let replies = await directory.read([
            .listContent(requester: "a", owner: "b"), .listContent(requester: "off", owner: "b"),
            .listUsers(requester: "b"), .listContent(requester: "nobody", owner: "b"),
            .listContent(requester: "b", owner: "nobody"), .listContent(requester: "b", owner: "a"),
            .listContent(requester: "a", owner: "off"), .search(requester: "a", query: "b"),
            .listContent(requester: "b", owner: "b"), .listContent(requester: "a", owner: "nobody"),
            .listContent(requester: "off", owner: "nobody"), .listContent(requester: "off", owner: "a"),
            .listContent(requester: "a", owner: "a"),
        ])
        #expect(
            replies == [
                .content([PublishedFile(name: "b1", description: "one"), PublishedFile(name: "b2", description: "two")]
                ),
                .status(2),
                .users([
                    ConnectedUser(name: "a", ip: "1.1.1.1", port: "1"),
                    ConnectedUser(name: "b", ip: "2.2.2.2", port: "2"),
                ]),
                .status(1), .status(3), .content([PublishedFile(name: "a1", description: "x")]), .content([]),
                .hits([
                    SearchHit(owner: "b", name: "b1", description: "one"),
                    SearchHit(owner: "b", name: "b2", description: "two"),
                ]),
                .content([PublishedFile(name: "b1", description: "one"), PublishedFile(name: "b2", description: "two")]
                ),
                .status(3), .status(2), .status(2), .content([PublishedFile(name: "a1", description: "x")]),
            ])
        try await directory.close()
    }

    /// Many concurrent batches: each name registered exactly once.
    @Test(arguments: StoreUnderTest.all)
    func concurrentBatchesOfOneName(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let directory = try await store.open(folder)
        let codes = await withTaskGroup(of: Array<P2PProtocol.ResultCode>.self) { group in
            for _ in 0..<50 {
                group.addTask { await directory.apply([.register(user: "same"), .register(user: "same")]) }
            }
            return await group.reduce(into: []) { $0 += $1 }
        }
        #expect(codes.filter { $0 == .ok }.count == 1)
        #expect(codes.filter { $0 == 1 }.count == 99)
        #expect(try await directory.registeredUsers() == ["same"])
        try await directory.close()
    }

    /// The reads whoever asks (the peer checks and the web page): the same answers as the
    /// protocol's reads give a connected user.
    @Test(arguments: StoreUnderTest.all)
    func readsForTheServerItself(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let directory = try await store.open(folder)
        _ = await directory.apply([
            .register(user: "b"), .register(user: "a"), .register(user: "offline"),
            .connect(user: "b", ip: "1.1.1.1", port: "1"), .connect(user: "a", ip: "2.2.2.2", port: "2"),
            .publish(user: "b", fileName: "song-2.mp3", description: "<b>loud</b>"),
            .publish(user: "b", fileName: "notes.txt", description: "lecture"),
            .publish(user: "a", fileName: "song-1.mp3", description: "quiet"),
        ])
        #expect(try await directory.overview() == DirectoryOverview(users: 3, connectedUsers: 2, files: 3))
        #expect(
            try await directory.connectedUsers() == [
                ConnectedUser(name: "a", ip: "2.2.2.2", port: "2"), ConnectedUser(name: "b", ip: "1.1.1.1", port: "1"),
            ])
        #expect(
            try await directory.files(of: "b") == [
                PublishedFile(name: "song-2.mp3", description: "<b>loud</b>"),
                PublishedFile(name: "notes.txt", description: "lecture"),
            ])
        #expect(try await directory.files(of: "offline") == [])
        #expect(try await directory.files(of: "nobody") == nil)
        #expect(
            try await directory.search("SONG") == [
                SearchHit(owner: "b", name: "song-2.mp3", description: "<b>loud</b>"),
                SearchHit(owner: "a", name: "song-1.mp3", description: "quiet"),
            ])
        #expect(try await directory.search("--") == [])
        try await directory.close()
    }

    /// A store that can no longer make changes durable answers each operation's "other" code.
    @Test(arguments: StoreUnderTest.all)
    func closedStoreAnswersOtherCodes(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let directory = try await store.open(folder)
        #expect(await directory.apply(.register(user: "a")) == .ok)
        try await directory.close()
        let changes: [DirectoryChange] = [
            .register(user: "b"), .unregister(user: "a"), .connect(user: "a", ip: "1.1.1.1", port: "1"),
            .disconnect(user: "a"), .publish(user: "a", fileName: "f", description: ""),
            .delete(user: "a", fileName: "f"),
        ]
        #expect(await directory.apply(changes) == changes.map(\.operation.otherErrorCode))
        #expect(
            await directory.read([.listUsers(requester: "a"), .listContent(requester: "a", owner: "a")]) == [
                .status(3), .status(4),
            ])
    }

    /// SEARCH over more files than one batch of a store's search reads: prefixes whose files
    /// rarely meet (the store must go on to the end of the driving prefix's files), a prefix of
    /// more words than a store merges at once, a prefix of several words read past a batch for
    /// rare hits, owners online and offline (online hits first).
    /// Each store answers as the reference does.
    @Test(arguments: StoreUnderTest.all.filter { $0.name != "in-memory reference" })
    func searchAgreesWithTheReferenceBeyondOneBatch(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let reference = InMemoryDirectoryStore()
        let tested = try await store.open(folder)
        var changes: [DirectoryChange] = []
        for owner in 0..<20 {
            changes.append(.register(user: "u\(owner)"))
            if owner % 3 == 0 { changes.append(.connect(user: "u\(owner)", ip: "10.0.0.\(owner)", port: "4000")) }
        }
        for index in 0..<2400 {
            // xk on the even files, yk on the odd ones and on every 50th even one: 24 files
            // have both. pN (300 words) on one file each.
            var words = [index % 2 == 0 ? "xk" : "yk"]
            if index % 50 == 0 { words.append("yk") }
            if index < 300 { words.append("p\(index)") }
            words.append("n\(index % 7)")
            // 24 files (of u0) with 60 words each starting with r: more rows than q's, in few files.
            if index % 100 == 60 { words = (0..<60).map { "r\($0 / 10)\($0 % 10)" } }
            // q0...q3 on two files in three, each word in its own quarter of the files: `q r`
            // merges four words whose batches end far apart, past a batch, for rare hits.
            if index % 3 != 0 { words.append("q\(index * 4 / 2400)") }
            changes.append(
                .publish(
                    user: "u\(index % 20)", fileName: "file\(index)", description: words.joined(separator: " "),
                    from: nil))
        }
        for start in stride(from: 0, to: changes.count, by: 500) {
            let batch = Array(changes[start..<min(start + 500, changes.count)])
            let expected = await reference.apply(batch)
            #expect(await tested.apply(batch) == expected)
        }
        // Files of offline owners come back online mid-way through the index's order.
        for owner in [1, 2] {
            let change = DirectoryChange.connect(user: "u\(owner)", ip: "10.0.1.\(owner)", port: "5000")
            #expect(await tested.apply([change]) == reference.apply([change]))
        }
        let queries = [
            "xk yk", "yk xk", "xk", "p", "p1 xk", "p yk", "n3 yk xk", "xk nothing", "p29 n1", "YK N6", "q r", "r q",
        ]
        .map { DirectoryQuery.search(requester: "u0", query: $0) }
        let expected = await reference.read(queries)
        let actual = await tested.read(queries)
        for (query, (want, got)) in zip(queries, zip(expected, actual)) {
            #expect(got == want, "\(query)")
        }
        try await tested.close()
    }

    /// Random sequences of changes, in random batches, give the same codes and lists on each
    /// store (SQLite, PostgreSQL) as on the in-memory reference.
    @Test(arguments: StoreUnderTest.all.filter { $0.name != "in-memory reference" })
    func storeAgreesWithTheReferenceOnRandomSequences(_ store: StoreUnderTest) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let reference = InMemoryDirectoryStore()
        let tested = try await store.open(folder)
        var random = SplitMix64(seed: 20_261_125)
        let users = ["a", "b", "c", "Ä", "日本", "b2", ""]
        let files = ["f", "g", "h.txt", "x y", ""]
        let ports = ["1", "4000", "65535", "0", "x"]
        let addresses: [String?] = ["10.0.0.1", "10.0.0.2", nil]
        func pick<T>(_ values: [T]) -> T { values[Int(random.next() % UInt64(values.count))] }
        for round in 0..<300 {
            var batch: [DirectoryChange] = []
            for _ in 0..<(1 + Int(random.next() % 8)) {
                let user = pick(users)
                switch random.next() % 7 {
                case 0: batch.append(.register(user: user))
                case 1: batch.append(.unregister(user: user, from: pick(addresses)))
                case 2: batch.append(.connect(user: user, ip: pick(["10.0.0.1", "10.0.0.2"]), port: pick(ports)))
                case 3: batch.append(.disconnect(user: user, from: pick(addresses)))
                case 4:
                    batch.append(
                        .publish(user: user, fileName: pick(files), description: "r\(round)", from: pick(addresses)))
                case 5: batch.append(.delete(user: user, fileName: pick(files), from: pick(addresses)))
                default: batch.append(.expire(user: user, ip: pick(["10.0.0.1", "10.0.0.2"]), port: pick(ports)))
                }
            }
            let expected = await reference.apply(batch)
            let actual = await tested.apply(batch)
            #expect(actual == expected, "round \(round): \(batch)")
            var queries: [DirectoryQuery] = users.map { .listUsers(requester: $0) }
            queries += ["f", "r1", "g h", "txt", "r100", "r25 txt", "r2999", "r1234567", "r123456"].map {
                .search(requester: "a", query: $0)
            }
            for requester in users {
                for owner in users { queries.append(.listContent(requester: requester, owner: owner)) }
            }
            let expectedReplies = await reference.read(queries)
            let actualReplies = await tested.read(queries)
            #expect(actualReplies == expectedReplies, "round \(round)")
            if actual != expected || actualReplies != expectedReplies { break }
        }
        #expect(try await tested.registeredUsers() == reference.registeredUsers())
        try await tested.close()
    }
}

/// A small seeded generator, so that a failing random sequence can be replayed.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
