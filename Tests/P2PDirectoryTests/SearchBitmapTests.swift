import Foundation
import Logging
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PDirectory
@testable import P2PDirectoryPostgres
@testable import P2PDirectorySQLite
import P2PDirectoryStores

/// The SQLite store's bitmaps of frequent prefixes give the same answers as the index alone:
/// after files come and go, and when SQLite hands a deleted file's id to a new file.
@Suite struct SearchBitmapTests {
    /// A SQLite store in `folder` with these bitmap settings.
    static func store(in folder: TemporaryDirectory, _ settings: SearchBitmaps.Settings) throws -> SQLiteDirectoryStore
    {
        try SQLiteDirectoryStore(
            path: folder.path + "/" + SQLiteDirectoryStore.fileName, checkpointing: .init(), searchBitmaps: settings,
            logger: Logger(label: "test"))
    }

    @Test func bitmapsAnswerAsTheReferenceWhileFilesComeAndGo() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        // A prefix of 3 files or more gets a bitmap.
        let store = try Self.store(in: folder, .init(threshold: 3))
        let reference = InMemoryDirectoryStore()
        func apply(_ changes: [DirectoryChange]) async {
            let expected = await reference.apply(changes)
            #expect(expected.allSatisfy { $0 == .ok }, "\(changes)")
            #expect(await store.apply(changes) == expected, "\(changes)")
        }
        let queries = ["lect notes", "notes lect", "lect", "txt", "notes", "lect txt w2", "nothing"]
        func expectSameSearches(_ when: String) async {
            let asked = queries.map { DirectoryQuery.search(requester: "a", query: $0) }
            let expected = await reference.read(asked)
            #expect(await store.read(asked) == expected, "\(when)")
        }

        await apply([.register(user: "a"), .register(user: "b"), .register(user: "c")])
        await apply([
            .connect(user: "a", ip: "10.0.0.1", port: "4000"), .connect(user: "b", ip: "10.0.0.2", port: "4000"),
            .connect(user: "c", ip: "10.0.0.3", port: "4000"),
        ])
        // `lect` in 6 files, `notes` in 4: a search for both reads `notes` from the index and
        // tests `lect` in its bitmap.
        await apply([
            .publish(user: "a", fileName: "notes1.txt", description: "lecture w1", from: nil),
            .publish(user: "b", fileName: "notes2.txt", description: "Lecture w2", from: nil),
            .publish(user: "c", fileName: "notes3.txt", description: "lectern", from: nil),
            .publish(user: "a", fileName: "song.mp3", description: "lecture", from: nil),
            .publish(user: "b", fileName: "talk.ogg", description: "lecture w2", from: nil),
            .publish(user: "c", fileName: "notes4.txt", description: "lecture w3", from: nil),
        ])
        await expectSameSearches("before any bitmap")
        let expected: [SearchBitmaps.Subject] = [.prefix("lect"), .prefix("notes"), .prefix("txt"), .online]
        try await waitUntil("the bitmaps built", timeout: 20) { expected.allSatisfy(store.searchBitmaps.isReady) }
        #expect(!store.searchBitmaps.isReady(.prefix("w2")), "a prefix of 2 files got a bitmap")
        await expectSameSearches("with the bitmaps")

        // The newest file goes and a new one gets its id (SQLite reuses the highest): it has
        // `notes` but not `lect`, whose bitmap has the old file's bit set.
        await apply([.delete(user: "c", fileName: "notes4.txt", from: nil)])
        await apply([.publish(user: "c", fileName: "notes5.txt", description: "w3", from: nil)])
        await apply([.delete(user: "c", fileName: "notes5.txt", from: nil)])
        await apply([.publish(user: "a", fileName: "notes6.txt", description: "plain", from: nil)])
        await expectSameSearches("after an id was handed out again")
        // ... and the other way round: the new file has `lect`, the old one did not.
        await apply([.delete(user: "a", fileName: "notes6.txt", from: nil)])
        await apply([.publish(user: "b", fileName: "notes7.txt", description: "lectures", from: nil)])
        await expectSameSearches("after an id was handed out again with the word")

        // New files are in the bitmaps as soon as PUBLISH is answered; owners going offline
        // move their hits after the online owners'.
        await apply([.publish(user: "c", fileName: "more-notes.txt", description: "lect", from: nil)])
        await expectSameSearches("after a new file")
        await apply([.disconnect(user: "a", from: nil)])
        await expectSameSearches("after a disconnect")
        await apply([.unregister(user: "b", from: nil)])
        await expectSameSearches("after an unregister")
        await apply([
            .connect(user: "a", ip: "10.0.0.1", port: "4000"), .expire(user: "c", ip: "10.0.0.3", port: "4000"),
        ])
        await expectSameSearches("after a connect and an expiry")

        // More hits than a reply holds, some of their files deleted: the 100 answered are the
        // first 100 that are still there (deleted files are cleared from the bitmaps).
        await apply(
            (0..<150).map { .publish(user: "a", fileName: "lecture\($0).txt", description: "notes", from: nil) })
        await apply((0..<60).map { .delete(user: "a", fileName: "lecture\($0 * 2).txt", from: nil) })
        await expectSameSearches("after deleting many")
        await apply([.unregister(user: "a", from: nil)])
        await expectSameSearches("after the owner of many went")
        try await store.close()
    }

    /// Searches of ever new words do not make the store remember ever more prefixes.
    @Test func manyDifferentWordsAreNotAllRemembered() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let store = try Self.store(in: folder, .init())
        for batch in 0..<30 {
            _ = store.searchBitmaps.bitmaps(for: (0..<1000).map { "w\(batch)x\($0)" })
            #expect(store.searchBitmaps.rememberedCount <= SearchBitmaps.maxAsked)
        }
        try await store.close()
    }

    /// Bitmaps beyond the memory budget go, the least recently used first.
    @Test func bitmapsStayWithinTheirMemory() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        // One chunk (8 KiB) a bitmap here: room for two.
        let store = try Self.store(in: folder, .init(threshold: 1, memoryBudget: 20_000))
        #expect(await store.apply([.register(user: "a")]) == [.ok])
        #expect(await store.apply([.connect(user: "a", ip: "10.0.0.1", port: "4000")]) == [.ok])
        #expect(
            await store.apply([.publish(user: "a", fileName: "one.txt", description: "two three", from: nil)]) == [.ok])
        func searchUntilReady(_ word: String) async throws {
            try await waitUntil("a bitmap for \(word)", timeout: 20) {
                _ = await store.read([.search(requester: "a", query: word)])
                return store.searchBitmaps.isReady(.prefix(word))
            }
        }
        try await searchUntilReady("one")
        try await searchUntilReady("two")
        try await searchUntilReady("three")
        #expect(!store.searchBitmaps.isReady(.prefix("one")), "the least recently used stayed")
        #expect(store.searchBitmaps.isReady(.prefix("two")))
        #expect(store.searchBitmaps.isReady(.online), "the online bitmap went")
        try await store.close()
    }
}

/// The words of ASCII text are found without Foundation's folding, and must be the same.
@Suite struct SearchWordsTests {
    @Test func asciiWordsAreTheFoldedWords() {
        var texts = ["lecture-notes.pdf", "W42 TXT", "file3.txt", "  a--b__c  ", "", "Z9z0", "x\u{7F}y\ty\nz"]
        // Every ASCII character between two letters, and alone.
        for byte in UInt8(0)..<0x80 {
            let character = String(decoding: [byte], as: UTF8.self)
            texts += ["ab" + character + "cD", character]
        }
        for text in texts {
            #expect(
                DirectoryRules.searchWords(text) == DirectoryRules.foldedSearchWords(text), "\(text.debugDescription)")
        }
        // Not ASCII: the folding.
        #expect(DirectoryRules.searchWords("Éte\u{301} Ünïcode-日本") == ["ete", "unicode", "日本"])
    }
}
