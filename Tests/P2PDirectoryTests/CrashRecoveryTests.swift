import Foundation
import NIOCore
import P2PDirectory
@testable import P2PDirectoryPostgres
@testable import P2PDirectorySQLite
import P2PDirectoryStores
import P2PProtocol
import P2PTestSupport
import Synchronization
import Testing

/// PROTOCOL.md section 2: an operation that was answered 0 is never lost, even when the
/// server process is killed with SIGKILL at an arbitrary moment.
@Suite struct CrashRecoveryTests {
    @Test func everyAcknowledgedRegisterSurvivesSIGKILL() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try ChildProcess(
            builtProduct("p2p-server"),
            ["--host", "127.0.0.1", "-p", "0", "--data-dir", folder.path, "--no-oplog"])
        let line = try await server.waitForLine { $0.hasPrefix("s> init server") }
        let port = Int(line.split(separator: ":").last!)!
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: port)

        let acknowledged = Locked<[String]>([])
        let clients = 16
        try await withThrowingTaskGroup(of: Void.self) { group in
            for client in 0..<clients {
                group.addTask {
                    for index in 0..<100_000 {
                        let name = "c\(client)-\(index)"
                        let request = Request(dateTime: "25/11/2026 13:05:09", command: .register(user: name))
                        guard let reply = try? await RawConnection.send(request, to: address) else { return }
                        if reply == .status(0) { acknowledged.withLock { $0.append(name) } }
                    }
                }
            }
            // Kill it in the middle of the stream, once a good number were answered.
            try await waitUntil("300 acknowledged registrations") { acknowledged.withLock { $0.count } >= 300 }
            server.signal(SIGKILL)
            try await group.waitForAll()
        }
        try await server.waitForExit()

        let acked = acknowledged.withLock { $0 }
        let store = try SQLiteDirectoryStore(dataDirectory: folder.path)
        let stored = Set(try await store.registeredUsers())
        try await store.close()
        let lost = acked.filter { !stored.contains($0) }
        #expect(acked.count >= 300)
        #expect(lost.isEmpty, "\(lost.count) acknowledged registrations lost: \(lost.prefix(10))")
    }
}

@Suite struct ServerLifecycleTests {
    @Test func portInUseIsAClearError() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let first = try await ServerProcess(dataDirectory: folder.file("one"))
        let second = try ChildProcess(
            builtProduct("p2p-server"),
            ["--host", "127.0.0.1", "-p", String(first.port), "--data-dir", folder.file("two"), "--no-oplog"])
        let status = try await second.waitForExit()
        await first.stop()
        #expect(status == 1)
        #expect(second.stderrLines.contains { $0.contains("cannot listen on 127.0.0.1:\(first.port)") })
    }

    /// A second server on the same data folder would serve stale remembered replies and search
    /// bitmaps (each store assumes it alone writes its file): it is refused, and the first one
    /// goes on serving what it acknowledged.
    @Test func secondServerOnTheSameDataFolderIsRefused() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let first = try await ServerProcess(dataDirectory: folder.path)
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: first.port)
        let register = Request(dateTime: "25/11/2026 13:05:09", command: .register(user: "alice"))
        #expect(try await RawConnection.send(register, to: address) == .status(0))

        let second = try ChildProcess(
            builtProduct("p2p-server"), ["--host", "127.0.0.1", "-p", "0", "--data-dir", folder.path, "--no-oplog"])
        let status = try await second.waitForExit()
        #expect(status == 1)
        #expect(
            second.stderrLines.contains {
                $0.contains("is in use by process \(first.process.pid)") && $0.contains("stop it first")
            }, "\(second.stderrLines)")

        // The first server is untouched: it still knows alice and takes new users.
        #expect(try await RawConnection.send(register, to: address) == .status(1))
        let bob = Request(dateTime: "25/11/2026 13:05:09", command: .register(user: "bob"))
        #expect(try await RawConnection.send(bob, to: address) == .status(0))
        await first.stop()

        // Once it stopped, the folder opens again and holds both.
        let store = try SQLiteDirectoryStore(dataDirectory: folder.path)
        #expect(try await store.registeredUsers().sorted() == ["alice", "bob"])
        try await store.close()
    }

    /// The lock is per store, not per process: a second store on an open file fails at once,
    /// also when it names the file through a symbolic link; a store that was closed (or
    /// dropped) lets the next one in.
    @Test func oneStorePerFileInOneProcess() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let store = try SQLiteDirectoryStore(dataDirectory: folder.path)
        let path = folder.file(SQLiteDirectoryStore.fileName)
        #expect(throws: SQLiteDirectoryStoreError.inUse(path: path, byProcess: getpid())) {
            try SQLiteDirectoryStore(dataDirectory: folder.path)
        }
        // Nor through another name of the same file.
        let link = folder.file("other.sqlite")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: path)
        #expect(throws: SQLiteDirectoryStoreError.inUse(path: link, byProcess: getpid())) {
            try SQLiteDirectoryStore(path: link)
        }
        #expect(await store.apply([.register(user: "alice")]) == [.ok])
        try await store.close()

        var reopened: SQLiteDirectoryStore? = try SQLiteDirectoryStore(dataDirectory: folder.path)
        #expect(try await reopened?.registeredUsers() == ["alice"])
        // Dropped without a close (a failed start, say): the lock goes with it.
        reopened = nil
        let last = try SQLiteDirectoryStore(dataDirectory: folder.path)
        #expect(try await last.registeredUsers() == ["alice"])
        try await last.close()
    }

    @Test func threadCountOutOfRangeIsRejected() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try ChildProcess(
            builtProduct("p2p-server"),
            ["--host", "127.0.0.1", "-p", "0", "--data-dir", folder.path, "--no-oplog", "--threads", "0"])
        // 64: ArgumentParser's exit code for a validation error (EX_USAGE).
        #expect(try await server.waitForExit() == 64)
        #expect(server.stderrLines.contains { $0.contains("--threads must be 1-256") })
    }

    /// With several event loops, connections are spread over them and every change still goes
    /// through the one writer.
    @Test func serveWithSeveralEventLoops() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.path, arguments: ["--no-oplog", "--threads", "3"])
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: server.port)
        let codes = try await withThrowingTaskGroup(of: Reply.self) { group in
            for index in 0..<60 {
                group.addTask {
                    let request = Request(dateTime: "25/11/2026 13:05:09", command: .register(user: "user\(index)"))
                    return try await RawConnection.send(request, to: address)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        await server.stop()
        #expect(codes.count == 60)
        #expect(codes.allSatisfy { $0 == .status(0) })
        let store = try SQLiteDirectoryStore(dataDirectory: folder.path)
        #expect(try await store.registeredUsers().count == 60)
        try await store.close()
    }
}
