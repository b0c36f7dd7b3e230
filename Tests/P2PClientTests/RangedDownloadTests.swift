import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import P2PProtocol
import P2PTestSupport
import Synchronization
import Testing

@testable import P2PClient

/// Downloads between peers of ours (docs/PROTOCOL.md, "Extension: file info and ranges"):
/// verified, resumed, from several sources, within the upload cap; and exactly today's GET_FILE
/// against a peer that does not know the extension.
@Suite struct RangedDownloadTests {
    /// `count` random bytes, eight at a time (a byte at a time takes seconds in a debug build).
    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { raw in
            var offset = 0
            while offset < raw.count {
                let word = generator.next()
                withUnsafeBytes(of: word) {
                    raw.baseAddress!.advanced(by: offset).copyMemory(
                        from: $0.baseAddress!, byteCount: min(8, raw.count - offset))
                }
                offset += 8
            }
        }
        return bytes
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    /// A share folder holding `files`, each published, served by an in-process peer of ours.
    static func ourPeer(
        _ files: [String: [UInt8]], in folder: TemporaryDirectory, named name: String,
        limits: UploadLimits = UploadLimits()
    ) async throws -> PeerFileServer {
        let path = folder.file(name)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for (file, content) in files {
            try Data(content).write(to: URL(fileURLWithPath: "\(path)/\(file)"))
        }
        let shared = try SharedFolder(path: path)
        shared.publish(contentsOf: files.keys)
        return try await PeerFileServer.start(folder: shared, host: "127.0.0.1", limits: limits, logger: quietLogger)
    }

    static func source(_ owner: String, _ port: Int) -> PeerSource {
        PeerSource(owner: owner, host: "127.0.0.1", port: port)
    }

    @Test func ourPeerTellsSizeAndDigestAndServesRanges() async throws {
        let folder = try TemporaryDirectory("ranged")
        defer { folder.remove() }
        let content = Self.randomBytes(100_000)
        let peer = try await Self.ourPeer(["data.bin": content], in: folder, named: "owner")
        let info = await FileDownloader().info(
            of: "data.bin", from: PeerSource(owner: "owner", host: "127.0.0.1", port: peer.port))
        #expect(info == FileInfo(size: 100_000, sha256: Self.sha256(content)))
        #expect(
            await FileDownloader().info(
                of: "missing.bin", from: PeerSource(owner: "owner", host: "127.0.0.1", port: peer.port)) == nil)
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: peer.port)
        let range = PeerRequest.range(offset: 1000, length: 5, name: "data.bin").fileName!
        #expect(
            try await RawConnection.exchange(RawConnection.fields("GET_FILE", range), with: address)
                == Array("0\0".utf8) + content[1000..<1005])
        let outside = PeerRequest.range(offset: 99_999, length: 2, name: "data.bin").fileName!
        #expect(
            try await RawConnection.exchange(RawConnection.fields("GET_FILE", outside), with: address)
                == Array("2\0".utf8))
        // Not published: no info, no range.
        let secret = PeerRequest.info(name: "../owner/data.bin").fileName!
        #expect(
            try await RawConnection.exchange(RawConnection.fields("GET_FILE", secret), with: address)
                == Array("1\0".utf8))
        await peer.stop()
    }

    /// Three sources, one of which goes away mid-way: the others take its chunks; the whole is
    /// verified.
    @Test func threeSourcesWithOneGoneStillGiveTheWholeFile() async throws {
        let folder = try TemporaryDirectory("ranged-three")
        defer { folder.remove() }
        let content = Self.randomBytes(40 << 20)
        let limits = UploadLimits(bytesPerSecond: 8 << 20)
        let peers = [
            try await Self.ourPeer(["f.bin": content], in: folder, named: "a", limits: limits),
            try await Self.ourPeer(["f.bin": content], in: folder, named: "b", limits: limits),
            try await Self.ourPeer(["f.bin": content], in: folder, named: "c", limits: limits),
        ]
        let target = folder.file("copy.bin")
        let received = ByteCount()
        let download = Task {
            try await FileDownloader().fetch(
                "f.bin",
                from: [
                    Self.source("a", peers[0].port), Self.source("b", peers[1].port), Self.source("c", peers[2].port),
                ],
                to: target, progress: { bytes, _ in received.set(bytes) })
        }
        try await waitUntil("a quarter of the file", timeout: 30) { received.value > Int64(content.count / 4) }
        await peers[1].stop()
        #expect(try await download.value == FileDownloader.Fetched(size: Int64(content.count), verified: true))
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: target)), content)
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() == ["a", "b", "c", "copy.bin"])
        for peer in peers { await peer.stop() }
    }

    /// A source that flips a byte in what it sends: the download fails and keeps nothing.
    @Test func aCorruptedRangeIsDetected() async throws {
        let folder = try TemporaryDirectory("ranged-corrupt")
        defer { folder.remove() }
        let content = Self.randomBytes(3 << 20)
        let liar = try await CorruptingPeer.start(content: content, name: "f.bin")
        let port = liar.localAddress!.port!
        do {
            try await FileDownloader().fetch("f.bin", from: [Self.source("liar", port)], to: folder.file("copy.bin"))
            Issue.record("a corrupted download succeeded")
        } catch {
            guard case .digestMismatch(let expected, _) = error else {
                Issue.record("expected a digest mismatch, got \(error)")
                return
            }
            #expect(expected == Self.sha256(content))
        }
        // Neither the file nor its partial file.
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        try await liar.close()
    }

    /// The cap holds for all uploads together: two downloads at once share it.
    @Test func uploadCapHolds() async throws {
        let folder = try TemporaryDirectory("ranged-cap")
        defer { folder.remove() }
        let cap = 4 << 20
        let content = Self.randomBytes(4 << 20)
        let peer = try await Self.ourPeer(
            ["f.bin": content], in: folder, named: "owner", limits: UploadLimits(bytesPerSecond: cap))
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<2 {
                group.addTask {
                    // Plain GET_FILE, as a third-party downloader would.
                    try await FileDownloader().download(
                        "f.bin", fromHost: "127.0.0.1", port: peer.port, to: folder.file("copy\(index).bin"))
                }
            }
            try await group.waitForAll()
        }
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rate = Double(2 * content.count) / seconds
        // The cap is a ceiling (a loaded machine may stay below it, never above).
        #expect(rate <= Double(cap) * 1.1, "\(rate / Double(1 << 20)) MiB/s against a cap of 4 MiB/s")
        await peer.stop()
    }

    /// A peer as the third-party ones behave: it is sent only well-formed GET_FILE requests,
    /// answers FILE NOT EXIST to the reserved name, and the file comes as plain GET_FILE.
    @Test func aThirdPartyPeerSeesOnlyGetFile() async throws {
        let folder = try TemporaryDirectory("ranged-third-party")
        defer { folder.remove() }
        let content = Array("the notes\n".utf8)
        let fragile = try FragilePeer(files: ["notes.txt": content])
        let ours = try await Self.ourPeer(["notes.txt": content], in: folder, named: "ours")
        let size = try await FileDownloader().fetch(
            "notes.txt", from: [Self.source("python", fragile.port), Self.source("ours", ours.port)],
            to: folder.file("copy.txt"))
        #expect(size == FileDownloader.Fetched(size: Int64(content.count), verified: true))
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: folder.file("copy.txt"))), content)
        // Alone, from the fragile one: plain GET_FILE after the info request it declined.
        let plain = try await FileDownloader().fetch(
            "notes.txt", from: [Self.source("python", fragile.port)], to: folder.file("c2.txt"))
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: folder.file("c2.txt"))), content)
        // Nothing to check its bytes against.
        #expect(plain == FileDownloader.Fetched(size: Int64(content.count), verified: false))
        let seen = fragile.seen
        #expect(seen.spins == 0 && seen.sendFailures == 0 && !seen.stoppedServing)
        #expect(
            seen.requests == [
                PeerRequest.info(name: "notes.txt").fileName!, PeerRequest.info(name: "notes.txt").fileName!,
                "notes.txt",
            ])
        await ours.stop()
    }
}

final class ByteCount: Sendable {
    private let count = Atomic<Int64>(0)
    func set(_ value: Int64) { count.store(value, ordering: .relaxed) }
    var value: Int64 { count.load(ordering: .relaxed) }
}

/// Tells the true size and digest but flips one byte of every range it sends.
final class CorruptingPeer: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let content: [UInt8]
    let name: String
    private let received = Mutex(ByteBuffer())

    init(content: [UInt8], name: String) {
        self.content = content
        self.name = name
    }

    static func start(content: [UInt8], name: String) async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(CorruptingPeer(content: content, name: name))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        let request = received.withLock { buffer -> FileRequest? in
            buffer.writeBuffer(&chunk)
            var decoder = FileRequestDecoder()
            var copy = buffer
            return try? decoder.decode(&copy)
        }
        guard let request else { return }
        var reply = ByteBuffer()
        switch PeerRequest(fileName: request.fileName) {
        case .info(let file)? where file == name:
            try? FileInfo(size: Int64(content.count), sha256: RangedDownloadTests.sha256(content)).encode(into: &reply)
        case .range(let offset, let length, let file)? where file == name:
            var part = Array(content[Int(offset)..<Int(offset + length)])
            part[part.count / 2] ^= 0xFF
            reply.writeBytes(Array("0\0".utf8) + part)
        default:
            reply.writeBytes(Array("1\0".utf8))
        }
        let channel = context.channel
        context.writeAndFlush(NIOAny(reply)).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Which chunks each source fetches, without sockets.
@Suite struct ChunkPlanTests {
    static func plan(_ count: Int, path: String) -> ChunkPlan {
        ChunkPlan(
            count: count, done: [],
            record: RangedDownload.Record(owners: ["a", "b"], remoteName: "f", size: 0, sha256: "", done: []),
            recordPath: path)
    }

    @Test func aSlowSourcesUnstartedChunksGoToTheOtherOnce() async throws {
        let folder = try TemporaryDirectory("plan")
        defer { folder.remove() }
        let plan = Self.plan(8, path: folder.file("record"))
        let slow = try #require(await plan.nextRun(sources: 2))
        #expect(slow.chunks == [0, 1])
        // The fast source takes the rest, run after run; with the list empty, it takes over the
        // slow source's chunk not yet started (1), not the one it is fetching (0).
        var fetched: [Int] = []
        var takenOver: ChunkPlan.Run?
        while let run = await plan.nextRun(sources: 2) {
            if run.chunks.contains(where: { $0 <= 1 }) {
                takenOver = run
                break
            }
            for chunk in run.chunks { _ = await plan.finished(chunk, run: run.id) }
            await plan.release(run.id)
            fetched += run.chunks
        }
        #expect(fetched == [2, 3, 4, 5, 6, 7])
        #expect(takenOver?.chunks == [1])
        // The slow source ends its run after the chunk it was fetching.
        let goesOn = await plan.finished(0, run: slow.id)
        #expect(!goesOn)
        await plan.release(slow.id)
        let taken = try #require(takenOver)
        _ = await plan.finished(1, run: taken.id)
        await plan.release(taken.id)
        #expect(await plan.doneCount == 8)
        #expect(await plan.nextRun(sources: 2) == nil)
    }

    @Test func aFailedRunGivesBackWhatItKept() async throws {
        let folder = try TemporaryDirectory("plan")
        defer { folder.remove() }
        let plan = Self.plan(4, path: folder.file("record"))
        let run = try #require(await plan.nextRun(sources: 1))
        #expect(run.chunks == [0, 1, 2, 3])
        _ = await plan.finished(0, run: run.id)
        await plan.release(run.id)
        #expect(await plan.nextRun(sources: 1)?.chunks == [1, 2, 3])
    }
}
