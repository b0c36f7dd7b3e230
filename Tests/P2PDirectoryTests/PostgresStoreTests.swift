import Foundation
import Logging
import P2PDirectoryStores
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PDirectory
@testable import P2PDirectoryPostgres
@testable import P2PDirectorySQLite

@Suite struct PostgresStoreTests {
    /// Two servers registering the same new names in opposite orders: one waits for the other,
    /// never both for each other. (PostgreSQL's deadlock detection is set off for the database,
    /// so a cycle would hold both batches until the store's deadline and fail them.)
    @Test func registersOfTheSameNamesInOppositeOrdersDoNotDeadlock() async throws {
        let server = try await PostgresServer.shared()
        let url = try await server.newDatabase()
        try await server.psql("ALTER DATABASE \(url.database) SET deadlock_timeout = '1h'")
        let one = try await DirectoryStoreLocation.postgres(url).open(logger: Logger(label: "test"))
        let two = try await DirectoryStoreLocation.postgres(url).open(logger: Logger(label: "test"))
        for round in 0..<10 {
            let names = (0..<300).map { "r\(round)-\($0)" }
            async let first = one.apply(names.map { .register(user: $0) })
            async let second = two.apply(names.reversed().map { .register(user: $0) })
            let (codes, reversedCodes) = await (first, second)
            let pairs = zip(codes, reversedCodes.reversed())
            #expect(
                pairs.allSatisfy { ($0 == .ok && $1 == 1) || ($0 == 1 && $1 == .ok) },
                "round \(round): \(codes) \(reversedCodes)")
        }
        #expect(try await one.registeredUsers().count == 3000)
        try await one.close()
        try await two.close()
    }

    /// Servers sharing the directory share the peer checks evenly: one alone claims everybody;
    /// when two more start, it gives back all but its share, the others take theirs, and each
    /// user stays claimed by one of them; when one shuts down its users go to the others at
    /// once, and when one dies, once its claims and its heartbeat run out.
    @Test func peerChecksAreSharedEvenlyAndTakenOverFromAServerThatLeaves() async throws {
        let server = try await PostgresServer.shared()
        let url = try await server.newDatabase()
        let store = try await DirectoryStoreLocation.postgres(url).open(logger: Logger(label: "test"))
        let names = (0..<30).map { "user\($0)" }
        let codes = await store.apply(
            names.map { .register(user: $0) } + names.map { .connect(user: $0, ip: "127.0.0.1", port: "9") })
        #expect(codes.allSatisfy { $0 == .ok })
        func claim(_ checker: String, lease: TimeInterval = 60) async throws -> Set<String> {
            Set(try await store.usersToCheck(checker: checker, lease: lease).map(\.name))
        }

        #expect(try await claim("a") == Set(names))
        // b and c start: a's claims still hold, so they get nobody yet.
        #expect(try await claim("b").isEmpty)
        #expect(try await claim("c").isEmpty)
        // a keeps its share (10, and up to a tenth more), b and c take the rest.
        var a = try await claim("a")
        let b = try await claim("b")
        let c = try await claim("c")
        #expect(a.count == 11 && b.count == 10 && c.count == 9, "\(a.count) \(b.count) \(c.count)")
        #expect(a.isDisjoint(with: b) && a.isDisjoint(with: c) && b.isDisjoint(with: c))
        #expect(a.union(b).union(c) == Set(names))
        // The next rounds change nothing.
        a = try await claim("a")
        #expect(try await claim("b") == b)
        #expect(try await claim("c") == c)
        #expect(a.count == 11)

        // c shuts down: its users are taken at the next rounds of a and b, not after its lease.
        try await store.stopChecking(checker: "c")
        a = try await claim("a")
        var b2 = try await claim("b")
        #expect(a.count == 15 && b2.count == 15, "\(a.count) \(b2.count)")
        #expect(a.isDisjoint(with: b2) && a.union(b2) == Set(names))

        // a dies: its last round asked for a short lease, which runs out; b takes everybody.
        _ = try await claim("a", lease: 0.5)
        try await waitUntil("b to take over a's users", timeout: 15) {
            b2 = try await claim("b")
            return b2 == Set(names)
        }
        try await store.close()
    }

    /// A directory kept by a server before the word rows carried their file's words (schema
    /// version 5) is searched as before once a newer server has opened it: the upgrade fills
    /// the words of the files already there.
    @Test func filesPublishedBeforeTheWordsColumnAreFoundAfterTheUpgrade() async throws {
        let server = try await PostgresServer.shared()
        let url = try await server.newDatabase()
        let older = PostgresDirectoryStore.migrations.filter { $0.version <= 5 }
        #expect(older.count == 5)
        var setup = [
            """
            CREATE TABLE directory_schema (version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ \
            NOT NULL DEFAULT now())
            """
        ]
        for migration in older {
            setup += migration.statements
            setup.append(
                "INSERT INTO directory_schema (version, name) VALUES (\(migration.version), 'v\(migration.version)')")
        }
        // What a version-5 server wrote for alice (connected), bob and their files (ids 1 to 3
        // in a new database).
        setup += [
            "INSERT INTO directory_user (name, ip, port) VALUES ('alice', '127.0.0.1', '4000'), ('bob', NULL, NULL)",
            """
            INSERT INTO directory_file (owner, name, description) VALUES
                ('alice', 'lecture-notes.pdf', 'Week 1 of Algebra'), ('alice', 'beach.jpg', 'Summer photo'),
                ('bob', 'algebra-notes.txt', 'week 2')
            """,
            """
            INSERT INTO directory_file_word (word, file_id, offline) VALUES
                ('lecture', 1, false), ('notes', 1, false), ('pdf', 1, false), ('week', 1, false), ('1', 1, false),
                ('of', 1, false), ('algebra', 1, false), ('beach', 2, false), ('jpg', 2, false), ('summer', 2, false),
                ('photo', 2, false), ('algebra', 3, true), ('notes', 3, true), ('txt', 3, true), ('week', 3, true),
                ('2', 3, true)
            """,
        ]
        _ = try await server.psql(setup.joined(separator: ";\n"), database: url.database)

        let store = try await PostgresDirectoryStore.open(url, logger: Logger(label: "test"))
        let lecture = SearchHit(owner: "alice", name: "lecture-notes.pdf", description: "Week 1 of Algebra")
        let beach = SearchHit(owner: "alice", name: "beach.jpg", description: "Summer photo")
        let bobs = SearchHit(owner: "bob", name: "algebra-notes.txt", description: "week 2")
        for (query, hits) in [
            ("NOTES alg", [lecture, bobs]), ("wee not", [lecture, bobs]), ("photo bea", [beach]),
            ("lect photo", []), ("txt week alg", [bobs]), ("summer", [beach]),
        ] {
            #expect(
                await store.read([.search(requester: "alice", query: query)]) == [.hits(hits)], "\(query)")
        }
        // And what is published after the upgrade is found with it.
        #expect(
            await store.apply([.publish(user: "alice", fileName: "notes-2.txt", description: "Photo album")]) == [.ok])
        #expect(
            await store.read([.search(requester: "alice", query: "phot note")])
                == [.hits([SearchHit(owner: "alice", name: "notes-2.txt", description: "Photo album")])])
        try await store.close()
    }

    /// A prefix of more words than a merge takes (`maxMergedWords`) drives the search word by
    /// word, the other prefixes tested in its rows: the hits are the reference's, in its order,
    /// with the statistics telling the planner that the other prefixes are the larger ones.
    @Test func aPrefixOfVeryManyWordsDrivesWithTheOthersTestedInItsRows() async throws {
        let server = try await PostgresServer.shared()
        let url = try await server.newDatabase()
        let store = try await PostgresDirectoryStore.open(url, logger: Logger(label: "test"))
        let reference = InMemoryDirectoryStore()
        var changes: [DirectoryChange] = [
            .register(user: "on"), .register(user: "off"), .connect(user: "on", ip: "127.0.0.1", port: "4000"),
            .connect(user: "off", ip: "127.0.0.1", port: "4001"),
        ]
        let many = PostgresDirectoryStore.maxMergedWords + 44
        for index in 0..<many {
            changes.append(
                .publish(
                    user: index % 3 == 0 ? "off" : "on", fileName: "zqxywvu\(index).bin",
                    description: index % 2 == 0 ? "common red" : "common blue"))
        }
        for index in 0..<(4 * many) {
            changes.append(.publish(user: "off", fileName: "filler\(index).txt", description: "common red blue"))
        }
        // Published while connected (PUBLISH asks that); offline owners' files come last.
        changes.append(.disconnect(user: "off"))
        for part in stride(from: 0, to: changes.count, by: 200) {
            let batch = Array(changes[part..<min(part + 200, changes.count)])
            let expected = await reference.apply(batch)
            #expect(expected.allSatisfy { $0 == .ok })
            #expect(await store.apply(batch) == expected)
        }
        _ = try await server.psql("ANALYZE", database: url.database)
        for query in ["zqxywvu red", "zqxywvu bl", "common zqxywvu", "zqxywvu1 red", "zqxywvu nothing", "zqxywvu"] {
            let asked: [DirectoryQuery] = [.search(requester: "on", query: query)]
            let expected = await reference.read(asked)
            #expect(await store.read(asked) == expected, "\(query)")
        }
        try await store.close()
    }

    /// A planner's estimate SEARCH has used before is never asked again while a search waits:
    /// once older than its lifetime, the search after uses it as it is (and answers the same
    /// hits) and it is asked again in the background, for the searches after that.
    @Test func aStaleEstimateIsUsedAndAskedAgainInTheBackground() async throws {
        let server = try await PostgresServer.shared()
        let url = try await server.newDatabase()
        var settings = PostgresDirectoryStore.Settings()
        settings.estimateLifetime = .zero  // stale as soon as asked
        let store = try await PostgresDirectoryStore.open(url, settings: settings, logger: Logger(label: "test"))
        let reference = InMemoryDirectoryStore()
        func apply(_ changes: [DirectoryChange]) async {
            let expected = await reference.apply(changes)
            #expect(expected.allSatisfy { $0 == .ok })
            #expect(await store.apply(changes) == expected)
        }
        func search(_ query: String) async {
            let asked: [DirectoryQuery] = [.search(requester: "u", query: query)]
            let expected = await reference.read(asked)
            #expect(await store.read(asked) == expected, "\(query)")
        }
        await apply([.register(user: "u"), .connect(user: "u", ip: "127.0.0.1", port: "4000")])
        await apply((0..<20).map { .publish(user: "u", fileName: "alpha\($0).txt", description: "beta") })
        _ = try await server.psql("ANALYZE directory_file_word", database: url.database)
        await search("alpha beta")
        let first = try #require(store.rememberedEstimate(ofRowsStartingWith: "alpha"))

        // Many more rows for the prefix, and statistics that say so.
        for part in 0..<10 {
            await apply(
                (0..<200).map { .publish(user: "u", fileName: "alpha-\(part)-\($0).txt", description: "gamma") })
        }
        _ = try await server.psql("ANALYZE directory_file_word", database: url.database)
        // This search decides with the old estimate and starts asking again.
        await search("alpha beta")
        let refreshed = await ConnectionFairnessTests.eventually(10) {
            (store.rememberedEstimate(ofRowsStartingWith: "alpha") ?? 0) > 10 * first
        }
        #expect(refreshed, "the estimate of alpha stayed \(first)")
        await search("alpha beta")
        await search("alpha gamma")
        try await store.close()
    }
}
