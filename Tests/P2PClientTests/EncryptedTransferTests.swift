import Foundation
import NIOCore
import NIOPosix
import P2PIdentity
import P2PProtocol
import P2PTestSupport
import Synchronization
import Testing

@testable import P2PClient

/// Transfers between peers of ours over TLS, pinned to the owner's key (issue 44), over real
/// sockets, with a man in the middle that records or alters what crosses it.
@Suite struct EncryptedTransferTests {
    static let alice = IdentityKey()
    static let bob = IdentityKey()
    static let mallory = IdentityKey()

    /// Text that is easy to look for in the bytes on the wire.
    static let content = Array(String(repeating: "alice's plain words, line after line.\n", count: 8000).utf8)

    /// An owner of ours serving `data.txt` with `key` (no TLS at all when nil), logging into
    /// `log`, and a proxy in front of it.
    static func owner(
        key: IdentityKey?, in folder: TemporaryDirectory, log: LogRecorder = LogRecorder(),
        alterAt offset: Int? = nil
    ) async throws -> (PeerFileServer, TappingProxy) {
        let path = folder.file("share")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Data(content).write(to: URL(fileURLWithPath: "\(path)/data.txt"))
        let shared = try SharedFolder(path: path)
        shared.publish("data.txt")
        let server = try await PeerFileServer.start(
            folder: shared, host: "127.0.0.1", tls: try key.map { try PeerTLS(identity: $0) },
            logger: log.logger(level: .info))
        let proxy = try await TappingProxy.start(to: server.port, alterAt: offset)
        return (server, proxy)
    }

    /// A source for alice through `proxy`, pinned to `key` (not pinned when nil), downloaded
    /// by bob.
    /// How a download of `data.txt` from `source` that must not happen failed; nil (and an
    /// issue) when it succeeded.
    static func refusal(of source: PeerSource, into folder: TemporaryDirectory) async -> DownloadError? {
        do {
            try await FileDownloader().fetch("data.txt", from: [source], to: folder.file("copy.txt"))
            Issue.record("a download that must be refused succeeded")
            return nil
        } catch {
            return error
        }
    }

    static func source(_ proxy: TappingProxy, pinnedTo key: IdentityKey?) throws -> PeerSource {
        var source = PeerSource(owner: "alice", host: "127.0.0.1", port: proxy.port)
        if let key { source.pin = PeerPin(key: key.publicKeyText, tls: try PeerTLS(identity: bob)) }
        return source
    }

    static func contains(_ haystack: [UInt8], _ needle: String) -> Bool {
        let needle = Array(needle.utf8)
        guard haystack.count >= needle.count else { return false }
        return (0...(haystack.count - needle.count)).contains {
            haystack[$0..<($0 + needle.count)].elementsEqual(needle)
        }
    }

    @Test func aPinnedDownloadIsEncryptedAndTheOwnerLearnsWhoAsked() async throws {
        let folder = try TemporaryDirectory("tls-pinned")
        defer { folder.remove() }
        let log = LogRecorder()
        let (server, proxy) = try await Self.owner(key: Self.alice, in: folder, log: log)
        let size = try await FileDownloader().fetch(
            "data.txt", from: [try Self.source(proxy, pinnedTo: Self.alice)], to: folder.file("copy.txt"))
        #expect(size == FileDownloader.Fetched(size: Int64(Self.content.count), verified: true))
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: folder.file("copy.txt"))), Self.content)

        // On the wire: the request for TLS in clear, then nothing readable either way, not even
        // the name of the file asked for.
        let (up, down) = proxy.recorded
        #expect(Self.contains(up, "/.p2p-reserved/v1/tls"))
        #expect(!Self.contains(up, "data.txt"))
        #expect(!Self.contains(down, "plain words"))
        #expect(down.count > Self.content.count)
        // The owner's log (what --verbose shows) names the downloader's key.
        #expect(
            log.lines.contains {
                $0.contains("GET_FILE data.txt to") && $0.contains("TLS, key \(Self.bob.fingerprint)")
            })
        await server.stop()
        try await proxy.close()
    }

    @Test func aByteAlteredOnTheWayFailsTheDownload() async throws {
        let folder = try TemporaryDirectory("tls-altered")
        defer { folder.remove() }
        let (server, proxy) = try await Self.owner(key: Self.alice, in: folder, alterAt: 150_000)
        await #expect(throws: DownloadError.self) {
            try await FileDownloader().fetch(
                "data.txt", from: [try Self.source(proxy, pinnedTo: Self.alice)], to: folder.file("copy.txt"))
        }
        #expect(proxy.altered)
        #expect(!FileManager.default.fileExists(atPath: folder.file("copy.txt")))
        await server.stop()
        try await proxy.close()
    }

    @Test func aPeerThatProvesAnotherKeyIsNotTheOwner() async throws {
        let folder = try TemporaryDirectory("tls-other-key")
        defer { folder.remove() }
        let log = LogRecorder()
        let (server, proxy) = try await Self.owner(key: Self.mallory, in: folder, log: log)
        if let error = await Self.refusal(of: try Self.source(proxy, pinnedTo: Self.alice), into: folder) {
            guard case .unverified(let reason) = error else {
                Issue.record("expected the key to be refused, got \(error)")
                return
            }
            #expect(reason.contains(Self.mallory.fingerprint) && reason.contains(Self.alice.fingerprint), "\(reason)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() == ["share"])
        #expect(!log.lines.contains { $0.contains("GET_FILE data.txt to") })
        await server.stop()
        try await proxy.close()
    }

    /// A peer that does not offer TLS (ours without an identity, or anything else at the
    /// address the directory gave for a bound user): nothing is asked of it in clear.
    @Test func aPinnedOwnerWithoutTLSIsNotAskedInClear() async throws {
        let folder = try TemporaryDirectory("tls-none")
        defer { folder.remove() }
        let (server, proxy) = try await Self.owner(key: nil, in: folder)
        if let error = await Self.refusal(of: try Self.source(proxy, pinnedTo: Self.alice), into: folder) {
            #expect("\(error)".contains("does not offer encrypted transfers"), "\(error)")
        }
        #expect(!Self.contains(proxy.recorded.up, "data.txt"))
        #expect(!FileManager.default.fileExists(atPath: folder.file("copy.txt")))
        await server.stop()
        try await proxy.close()
    }

    /// Downloaders that do not ask (third-party ones, or users bound to no key) get GET_FILE
    /// as always from an owner that offers TLS.
    @Test func anOwnerWithTLSStillServesPlainGetFile() async throws {
        let folder = try TemporaryDirectory("tls-plain")
        defer { folder.remove() }
        let (server, proxy) = try await Self.owner(key: Self.alice, in: folder)
        try await FileDownloader().fetch(
            "data.txt", from: [try Self.source(proxy, pinnedTo: nil)], to: folder.file("copy.txt"))
        try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: folder.file("copy.txt"))), Self.content)
        #expect(Self.contains(proxy.recorded.down, "plain words"))
        let reply = try await RawConnection.exchange(
            RawConnection.fields("GET_FILE", "data.txt"),
            with: try SocketAddress(ipAddress: "127.0.0.1", port: server.port))
        #expect(reply == Array("0\0".utf8) + Self.content)
        await server.stop()
        try await proxy.close()
    }
}

extension EncryptedTransferTests {
    /// A plain GET_FILE inside TLS (the downloader's --plain-get-file) has no length: when the
    /// owner stops in the middle (DISCONNECT during an upload), the downloader must see a cut,
    /// not the end TLS's close_notify would tell it. The owner resets the connection instead.
    @Test func anOwnerStoppingMidTransferIsACutUnderTLSToo() async throws {
        let folder = try TemporaryDirectory("tls-cut")
        defer { folder.remove() }
        let path = folder.file("share")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let content = RangedDownloadTests.randomBytes(4 << 20)
        try Data(content).write(to: URL(fileURLWithPath: "\(path)/big.bin"))
        let shared = try SharedFolder(path: path)
        shared.publish("big.bin")
        var limits = UploadLimits()
        limits.bytesPerSecond = 1 << 20
        let server = try await PeerFileServer.start(
            folder: shared, host: "127.0.0.1", limits: limits, tls: try PeerTLS(identity: Self.alice),
            logger: quietLogger)
        var source = PeerSource(owner: "alice", host: "127.0.0.1", port: server.port)
        source.pin = PeerPin(key: Self.alice.publicKeyText, tls: try PeerTLS(identity: Self.bob))
        let received = ByteCount()
        let download = Task {
            try await FileDownloader().download(
                "big.bin", from: source, to: folder.file("copy.bin"), progress: { bytes, _ in received.set(bytes) })
        }
        try await waitUntil("part of the file to arrive") { received.value > 256 * 1024 }
        await server.stop()
        await #expect(throws: DownloadError.self) { try await download.value }
        #expect(received.value < Int64(content.count))
        #expect(!FileManager.default.fileExists(atPath: folder.file("copy.bin")))
    }
}

/// A TCP proxy on 127.0.0.1 in front of a port: keeps a copy of what crosses it each way, and
/// flips one byte of what comes back from the target at `alterAt` (counted over the whole
/// connection), as a network in between could.
final class TappingProxy: Sendable {
    let channel: any Channel
    let port: Int
    private let state: Box<Mutex<(up: [UInt8], down: [UInt8], altered: Bool)>>

    private init(channel: any Channel, state: Box<Mutex<(up: [UInt8], down: [UInt8], altered: Bool)>>) {
        self.channel = channel
        port = channel.localAddress?.port ?? 0
        self.state = state
    }

    /// Everything sent to the target (`up`) and back (`down`), over every connection so far.
    var recorded: (up: [UInt8], down: [UInt8]) { state.value.withLock { ($0.up, $0.down) } }
    var altered: Bool { state.value.withLock { $0.altered } }

    static func start(to target: Int, alterAt: Int?) async throws -> TappingProxy {
        let state = Box(Mutex<(up: [UInt8], down: [UInt8], altered: Bool)>(([], [], false)))
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { inbound in
                ClientBootstrap(group: inbound.eventLoop)
                    .connect(host: "127.0.0.1", port: target)
                    .flatMap { outbound in
                        let up = Pipe(peer: outbound, record: { bytes in state.value.withLock { $0.up += bytes } })
                        var seen = 0
                        let down = Pipe(peer: inbound) { bytes in
                            state.value.withLock { $0.down += bytes }
                        } alter: { bytes in
                            defer { seen += bytes.count }
                            guard let alterAt, alterAt >= seen, alterAt < seen + bytes.count else { return }
                            bytes[alterAt - seen] ^= 0x01
                            state.value.withLock { $0.altered = true }
                        }
                        return inbound.pipeline.addHandler(up).flatMap {
                            outbound.pipeline.addHandler(down)
                        }.map { inbound.read() }
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TappingProxy(channel: channel, state: state)
    }

    func close() async throws {
        try await channel.close()
    }

    /// Passes what one side reads to `peer`, recording it; closes `peer` when this side closes.
    private final class Pipe: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let peer: any Channel
        let record: ([UInt8]) -> Void
        let alter: (inout [UInt8]) -> Void

        init(
            peer: any Channel, record: @escaping ([UInt8]) -> Void, alter: @escaping (inout [UInt8]) -> Void = { _ in }
        ) {
            self.peer = peer
            self.record = record
            self.alter = alter
        }

        func channelActive(context: ChannelHandlerContext) {
            context.read()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = Array(buffer: unwrapInboundIn(data))
            alter(&bytes)
            record(bytes)
            let own = context.channel
            peer.writeAndFlush(ByteBuffer(bytes: bytes)).whenComplete { _ in own.read() }
        }

        func channelInactive(context: ChannelHandlerContext) {
            peer.close(mode: .all, promise: nil)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
