import Foundation
import Logging
import P2PTestSupport
import Testing

@testable import P2PDirectory
@testable import P2PDirectoryPostgres
@testable import P2PDirectorySQLite
import P2PDirectoryStores

/// The write-ahead log is copied into the database file off the commit path (`WALCheckpointer`);
/// these tests check that it still stays short under steady writes and that nothing committed
/// is lost on the way.
@Suite struct WALCheckpointTests {

    private static func fileSize(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
    }

    @Test func logStaysShortUnderSteadyWrites() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let store = try SQLiteDirectoryStore(
            path: folder.file(SQLiteDirectoryStore.fileName),
            checkpointing: .init(interval: .milliseconds(10), restartFrames: 200),
            logger: Logger(label: "test"))
        let count = 5000
        // One commit per write: each adds at least one 4 KiB page to the log, so without
        // checkpoints the log would end above 20 MB.
        for index in 0..<count {
            #expect(await store.apply(.register(user: "user\(index)")) == .ok)
        }
        let logSize = Self.fileSize(folder.file("\(SQLiteDirectoryStore.fileName)-wal"))
        #expect(logSize > 0)
        #expect(logSize < 8 << 20, "write-ahead log is \(logSize) bytes after \(count) commits")
        try await store.close()
        // A clean close leaves everything in the database file.
        #expect(Self.fileSize(folder.file("\(SQLiteDirectoryStore.fileName)-wal")) == 0)

        let reopened = try SQLiteDirectoryStore(dataDirectory: folder.path)
        #expect(try await reopened.registeredUsers().count == count)
        try await reopened.close()
    }

    /// A change answered 0 must survive power loss too, so every commit is synced; GRDB's pool
    /// turns this down to NORMAL when it enables WAL, and the store turns it back up.
    @Test func everyCommitIsSynced() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let store = try SQLiteDirectoryStore(dataDirectory: folder.path)
        #expect(try store.writerSynchronousMode() == 2)
        try await store.close()
    }
}
