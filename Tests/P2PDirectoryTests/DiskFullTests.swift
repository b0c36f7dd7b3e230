import Foundation
import P2PDirectory
import P2PProtocol
import P2PTestSupport
import Synchronization
import Testing

/// The SQLite directory on a file system that fills up while changes stream in, and is freed
/// again: no change it could not keep is answered 0, reads go on, and changes are taken
/// again without a restart.
@Suite(.serialized) struct DiskFullTests {
    /// A tmpfs of `mebibytes` mounted at `path` for the test (needs root).
    struct SmallFileSystem {
        let path: String

        static func mount(at path: String, mebibytes: Int) async throws -> SmallFileSystem {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            guard await ChildProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(mebibytes)m", "tmpfs", path]) == 0
            else { throw SetupError("cannot mount a tmpfs at \(path)") }
            return SmallFileSystem(path: path)
        }

        /// Whether this machine lets the tests mount one (root, allowed to mount).
        static let canMount: Bool = {
            guard getuid() == 0, let folder = try? TemporaryDirectory() else { return false }
            defer { folder.remove() }
            func run(_ tool: String, _ arguments: [String]) -> Bool {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: tool)
                process.arguments = arguments
                process.standardError = FileHandle.nullDevice
                guard (try? process.run()) != nil else { return false }
                process.waitUntilExit()
                return process.terminationStatus == 0
            }
            guard run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", folder.path]) else { return false }
            return run("/bin/umount", [folder.path])
        }()

        func unmount() async {
            _ = await ChildProcess.run("/bin/umount", [path])
        }

        /// Writes `name` until the file system has no room left; its size then.
        func fill(_ name: String) throws -> Int {
            let fd = open("\(path)/\(name)", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            guard fd >= 0 else { throw SetupError("cannot create the filler: \(errno)") }
            defer { close(fd) }
            let chunk = [UInt8](repeating: 0xA5, count: 4096)
            var written = 0
            while true {
                let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if n <= 0 {
                    guard errno == ENOSPC || n == 0 else { throw SetupError("filler write failed: \(errno)") }
                    return written
                }
                written += n
            }
        }
    }

    /// REGISTERs of fresh names, one after another, each answer kept, until stopped.
    final class Writer: Sendable {
        let answers = Mutex<[(user: String, code: ResultCode?)]>([])
        let stopped = Atomic<Bool>(false)

        func run(against server: DirectoryHarness) async {
            var index = 0
            while !stopped.load(ordering: .relaxed) {
                let user = "user\(index)"
                index += 1
                let code = try? await server.send(.register(user: user)).code
                answers.withLock { $0.append((user, code)) }
            }
        }

        /// Answers after the first `count`.
        func answers(after count: Int) -> [(user: String, code: ResultCode?)] {
            answers.withLock { Array($0.dropFirst(count)) }
        }
    }

    @Test(.enabled(if: SmallFileSystem.canMount, "needs to mount a small tmpfs (root, allowed to mount)"))
    func aFullDiskRefusesChangesKeepsReadsAndTakesChangesAgain() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let disk = try await SmallFileSystem.mount(at: folder.file("small"), mebibytes: 4)
        do {
            try await exercise(disk)
        } catch {
            await disk.unmount()
            throw error
        }
        await disk.unmount()
    }

    private func exercise(_ disk: SmallFileSystem) async throws {
        let data = "\(disk.path)/data"
        let log = LogRecorder()
        let server = try await DirectoryHarness(dataDirectory: data, logger: log.logger(level: .notice))
        #expect(try await server.send(.register(user: "reader")) == .status(0))
        #expect(try await server.send(.connect(user: "reader", port: "5000")) == .status(0))
        #expect(try await server.send(.publish(user: "reader", fileName: "a.txt", description: "kept")) == .status(0))

        let writer = Writer()
        let writing = Task { await writer.run(against: server) }
        try await waitUntil("writes to stream") { writer.answers(after: 0).count >= 20 }

        // Full while the writes go on.
        let beforeFull = writer.answers(after: 0).count
        _ = try disk.fill("filler")
        try await waitUntil("a change refused for want of space", timeout: 30) {
            writer.answers(after: beforeFull).contains { $0.code == 2 }
        }
        // Reads are answered as before.
        #expect(try await server.send(.listUsers(user: "reader")).code == .ok)
        #expect(
            try await server.send(.listContent(user: "reader", owner: "reader"))
                == .content([PublishedFile(name: "a.txt", description: "kept")]))
        // Space back: changes are taken again, by the same server.
        try FileManager.default.removeItem(atPath: "\(disk.path)/filler")
        let beforeFreed = writer.answers(after: 0).count
        try await waitUntil("changes taken again", timeout: 30) {
            writer.answers(after: beforeFreed).contains { $0.code == 0 }
        }
        writer.stopped.store(true, ordering: .relaxed)
        await writing.value
        try await server.shutdown()

        let answers = writer.answers(after: 0)
        let ok = Set(answers.filter { $0.code == 0 }.map(\.user))
        let refused = Set(answers.filter { $0.code == 2 }.map(\.user))
        #expect(!refused.isEmpty && ok.count > 20)
        // Every answer was 0 or REGISTER's "other error" (2): never a lost connection or a hang.
        #expect(
            answers.allSatisfy { $0.code == 0 || $0.code == 2 }, "\(answers.filter { $0.code != 0 && $0.code != 2 })")

        // Opened again from the same file: every change answered 0 is there, none refused is.
        let reopened = try await DirectoryHarness(dataDirectory: data)
        let registered = Set(try await reopened.store.registeredUsers())
        #expect(ok.isSubset(of: registered), "lost: \(ok.subtracting(registered).sorted().prefix(10))")
        #expect(
            refused.isDisjoint(with: registered),
            "kept though refused: \(refused.intersection(registered).sorted().prefix(10))")
        try await reopened.shutdown()

        // The condition logged once when it began and once when it ended.
        let failing = log.lines.filter { $0.contains("directory writes are failing") }
        #expect(failing.count == 1, "\(failing)")
        #expect(failing.first?.contains("the disk is full") == true, "\(failing)")
        #expect(log.lines.filter { $0.contains("directory writes succeed again") }.count == 1, "\(log.lines)")
    }
}
