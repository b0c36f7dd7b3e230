import Foundation
import GRDB
import Logging
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PDirectory
@testable import P2PDirectorySQLite

/// The SQLite store's full-text index holds exactly the files there are: the writer moves what
/// the triggers noted into the index once per transaction (migration v5), and the store catches
/// up at open with files another program wrote.
@Suite struct SearchIndexTests {
    static func open(_ folder: TemporaryDirectory) throws -> SQLiteDirectoryStore {
        try SQLiteDirectoryStore(path: folder.path + "/" + SQLiteDirectoryStore.fileName, logger: Logger(label: "test"))
    }

    /// FTS5's own check of an external-content index against its table: fails with
    /// SQLITE_CORRUPT_VTAB when a file is missing from the index, or the index holds a file
    /// (or a word of one) that is gone.
    static func expectIndexMatchesFiles(_ folder: TemporaryDirectory, _ when: String) throws {
        let database = try DatabaseQueue(path: folder.path + "/" + SQLiteDirectoryStore.fileName)
        defer { try? database.close() }
        try database.write { db in
            #expect(throws: Never.self, "\(when)") {
                try db.execute(sql: "INSERT INTO file_search (file_search, rank) VALUES ('integrity-check', 1)")
            }
            let noted = try Int.fetchOne(db, sql: "SELECT count(*) FROM file_search_queue")
            #expect(noted == 0, "\(when)")
        }
    }

    @Test func theIndexHoldsExactlyTheFilesAfterTheyComeAndGo() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let store = try Self.open(folder)
        let reference = InMemoryDirectoryStore()
        func apply(_ changes: [DirectoryChange]) async {
            let expected = await reference.apply(changes)
            #expect(await store.apply(changes) == expected, "\(changes)")
        }
        await apply([.register(user: "a"), .register(user: "b"), .connect(user: "a", ip: "10.0.0.1", port: "4000")])
        // Published and deleted in one batch: never reaches the index.
        await apply([
            .publish(user: "a", fileName: "one.txt", description: "first lecture", from: nil),
            .publish(user: "a", fileName: "two.txt", description: "second lecture", from: nil),
            .delete(user: "a", fileName: "two.txt", from: nil),
        ])
        // The newest file deleted, then a new one in the same batch, which SQLite gives the
        // same id: the index must drop the old words before it takes the new ones.
        await apply([.publish(user: "a", fileName: "three.txt", description: "third talk", from: nil)])
        await apply([
            .delete(user: "a", fileName: "three.txt", from: nil),
            .publish(user: "a", fileName: "four.txt", description: "fourth song", from: nil),
        ])
        // And across batches.
        await apply([.delete(user: "a", fileName: "four.txt", from: nil)])
        await apply([.publish(user: "a", fileName: "five.txt", description: "fifth lecture", from: nil)])
        // An unregistered owner's files go with it.
        await apply([
            .connect(user: "b", ip: "10.0.0.2", port: "4000"),
            .publish(user: "b", fileName: "b1.txt", description: "talk", from: nil),
        ])
        await apply([.publish(user: "b", fileName: "b2.txt", description: "lecture notes", from: nil)])
        await apply([.unregister(user: "b", from: nil)])

        let queries = ["lecture", "talk", "song", "third", "fourth", "fifth", "notes", "txt"]
            .map { DirectoryQuery.search(requester: "a", query: $0) }
        #expect(await store.read(queries) == reference.read(queries))
        try await store.close()
        try Self.expectIndexMatchesFiles(folder, "after the changes")
    }

    @Test func filesAnotherProgramWroteAreIndexedAtOpen() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        var store = try Self.open(folder)
        #expect(
            await store.apply([.register(user: "a"), .connect(user: "a", ip: "10.0.0.1", port: "4000")]) == [.ok, .ok])
        #expect(
            await store.apply([.publish(user: "a", fileName: "old.txt", description: "old talk", from: nil)]) == [.ok])
        try await store.close()

        // The sqlite3 shell, say: its changes are noted by the triggers, not indexed.
        let database = try DatabaseQueue(path: folder.path + "/" + SQLiteDirectoryStore.fileName)
        try await database.write { db in
            try db.execute(sql: "INSERT INTO file (owner, name, description) VALUES ('a', 'new.txt', 'new talk')")
            try db.execute(sql: "DELETE FROM file WHERE name = 'old.txt'")
        }
        try database.close()

        store = try Self.open(folder)
        let hits = await store.read(.search(requester: "a", query: "talk"))
        #expect(hits == .hits([SearchHit(owner: "a", name: "new.txt", description: "new talk")]))
        try await store.close()
        try Self.expectIndexMatchesFiles(folder, "after the reopen")
    }
}
