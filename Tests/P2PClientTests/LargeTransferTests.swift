import Foundation
import NIOCore
import NIOPosix
import P2PTestSupport
import Testing

/// Big files between real client processes: integrity, and what a crash of the serving peer
/// leaves behind.
@Suite(.serialized) struct LargeTransferTests {
    /// Writes `mebibytes` MiB of pseudo-random bytes (a random block, stamped per MiB).
    static func makeFile(at path: String, mebibytes: Int) throws {
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        var generator = SystemRandomNumberGenerator()
        var block = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for index in 0..<mebibytes {
            withUnsafeBytes(of: UInt64(index).littleEndian) { block.replaceSubrange(0..<8, with: $0) }
            try handle.write(contentsOf: block)
        }
    }

    static func sha256(_ path: String) async throws -> String {
        let process = try ChildProcess("/usr/bin/sha256sum", [path])
        try await process.waitForExit(timeout: 120)
        return String(process.stdoutLines.first?.split(separator: " ").first ?? "")
    }

    /// A server, a time service, and a first client connected as user1 in `first/`.
    func withServingPeer(
        prepare: (String) throws -> Void,
        _ body: (ClientProcess, _ serverPort: Int, _ timeURL: String, TemporaryDirectory) async throws -> Void
    ) async throws {
        let folder = try TemporaryDirectory("large")
        defer { folder.remove() }
        for name in ["first", "second"] {
            try FileManager.default.createDirectory(atPath: folder.file(name), withIntermediateDirectories: true)
        }
        try prepare(folder.file("first"))
        let time = try await TimeProcess()
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let first = try ClientProcess(serverPort: server.port, timeURL: time.url, directory: folder.file("first"))
        do {
            // The peer serves only what its user shared: the whole folder here.
            first.send(["REGISTER user1", "CONNECT user1", "SHARE ."])
            try await first.waitFor("c> SHARE OK")
            try await body(first, server.port, time.url, folder)
        } catch {
            await first.process.stop()
            await server.stop()
            await time.stop()
            throw error
        }
        await first.process.stop()
        await server.stop()
        await time.stop()
    }

    @Test func oneGibibyteArrivesIntact() async throws {
        try await withServingPeer(prepare: { try Self.makeFile(at: "\($0)/big.bin", mebibytes: 1024) }) {
            _, serverPort, timeURL, folder in
            let lines = try await ClientProcess.run(
                ["REGISTER user2", "CONNECT user2", "GET_FILE user1 big.bin copy.bin"],
                serverPort: serverPort, timeURL: timeURL, directory: folder.file("second"))
            #expect(lines.suffix(2) == ["c> GET_FILE OK", "c> DISCONNECT OK"], "end of input disconnects")
            let original = try await Self.sha256(folder.file("first/big.bin"))
            #expect(original.count == 64)
            #expect(try await Self.sha256(folder.file("second/copy.bin")) == original)
        }
    }

    @Test func servingPeerKilledMidTransferResetsTheConnection() async throws {
        // 4 GiB but sparse: costs no disk, and takes long enough to be cut in the middle.
        try await withServingPeer(prepare: { try Self.makeSparseFile(at: "\($0)/huge.bin") }) {
            first, serverPort, timeURL, folder in
            let port = try await Self.peerPort(of: "user1", serverPort: serverPort, timeURL: timeURL, folder: folder)
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            let outcome: Result<Int, any Error> = try await channel.executeThenClose { inbound, outbound in
                var received = 0
                do {
                    try await outbound.write(ByteBuffer(bytes: RawConnection.fields("GET_FILE", "huge.bin")))
                    for try await chunk in inbound {
                        received += chunk.readableBytes
                        if received >= 1 << 20, first.process.isRunning {
                            first.process.signal(SIGKILL)
                        }
                    }
                    return .success(received)
                } catch {
                    return .failure(error)
                }
            }
            // A clean end of stream would look like a complete (short) file; a reset cannot.
            if case .success(let received) = outcome {
                Issue.record("the transfer ended normally after \(received) of 4 GiB bytes")
            }
        }
    }

    @Test func getFileWhosePeerDiesLeavesOnlyWhatResumesIt() async throws {
        try await withServingPeer(prepare: { try Self.makeSparseFile(at: "\($0)/huge.bin") }) {
            first, serverPort, timeURL, folder in
            let second = try ClientProcess(serverPort: serverPort, timeURL: timeURL, directory: folder.file("second"))
            second.send(["REGISTER user2", "CONNECT user2", "GET_FILE user1 huge.bin copy.bin"])
            // Kill the serving peer once the download is well under way: chunks recorded as arrived.
            let record = folder.file("second/.copy.bin.p2p-partial.info")
            // Generous: the owner hashes all 4 GiB before the first chunk (about 15 s here, and
            // once over 60 s on a busy shared machine).
            try await waitUntil("the download to start", timeout: 180) {
                let text = (try? String(contentsOfFile: record, encoding: .utf8)) ?? ""
                return text.contains("\ndone 0")
            }
            first.process.signal(SIGKILL)
            try await second.waitFor("c> GET_FILE FAIL", timeout: 60)
            let lines = try await second.finish()
            #expect(lines.suffix(2) == ["c> GET_FILE FAIL", "c> DISCONNECT OK"], "end of input disconnects")
            // No file under the destination name; the hidden partial file and its record stay.
            #expect(
                try FileManager.default.contentsOfDirectory(atPath: folder.file("second")).sorted()
                    == [".copy.bin.p2p-partial", ".copy.bin.p2p-partial.info"])
        }
    }

    static func makeSparseFile(at path: String) throws {
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: 4 << 30)
        try handle.close()
    }

    /// The port a connected user serves on, from LIST_USERS as a third client sees it.
    static func peerPort(of user: String, serverPort: Int, timeURL: String, folder: TemporaryDirectory) async throws
        -> Int
    {
        let lines = try await ClientProcess.run(
            ["REGISTER observer", "CONNECT observer", "LIST_USERS"],
            serverPort: serverPort, timeURL: timeURL, directory: folder.file("second"))
        let entry = try #require(lines.first { $0.hasPrefix("\(user) ") }, "LIST_USERS: \(lines)")
        return try #require(Int(entry.split(separator: " ")[2]))
    }
}
