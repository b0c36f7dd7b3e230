import Foundation
import Logging
import NIOCore
import NIOPosix
import P2PClient
import P2PProtocol
import P2PTestSupport
import Testing

let quietLogger: Logger = {
    var logger = Logger(label: "test-client")
    logger.logLevel = .critical
    return logger
}()

/// The peer side of GET_FILE (PROTOCOL.md section 4) over real sockets.
@Suite struct PeerTransferTests {
    /// A share folder with a few files, a peer server on it, and a folder to download into.
    func withPeer(_ body: (SharedFolder, PeerFileServer, TemporaryDirectory) async throws -> Void) async throws {
        let folder = try TemporaryDirectory("peer")
        defer { folder.remove() }
        let share = folder.file("share")
        let outside = folder.file("outside")
        for path in [share, outside, "\(share)/sub", folder.file("downloads")] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        try Data("hello".utf8).write(to: URL(fileURLWithPath: "\(share)/hello.txt"))
        try Data("nested".utf8).write(to: URL(fileURLWithPath: "\(share)/sub/nested.txt"))
        try Data("secret".utf8).write(to: URL(fileURLWithPath: "\(outside)/secret.txt"))
        try Data().write(to: URL(fileURLWithPath: "\(share)/empty.txt"))
        try Data("mine".utf8).write(to: URL(fileURLWithPath: "\(share)/secret.txt"))
        try Data("dot".utf8).write(to: URL(fileURLWithPath: "\(share)/.hidden"))
        try FileManager.default.createSymbolicLink(
            atPath: "\(share)/escape.txt", withDestinationPath: "\(outside)/secret.txt")
        try FileManager.default.createSymbolicLink(
            atPath: "\(share)/inside-link.txt", withDestinationPath: "\(share)/hello.txt")
        mkfifo("\(share)/pipe", 0o644)
        let shared = try SharedFolder(path: share)
        let server = try await PeerFileServer.start(folder: shared, host: "127.0.0.1", logger: quietLogger)
        do {
            try await body(shared, server, folder)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    func get(_ name: String, from server: PeerFileServer) async throws -> [UInt8] {
        try await RawConnection.exchange(
            RawConnection.fields("GET_FILE", name), with: try SocketAddress(ipAddress: "127.0.0.1", port: server.port))
    }

    @Test func servesPublishedFilesInsideTheShareFolder() async throws {
        try await withPeer { (shared: SharedFolder, server: PeerFileServer, _: TemporaryDirectory) async throws in
            let files = ["hello.txt": "hello", "sub/nested.txt": "nested", "inside-link.txt": "hello", "empty.txt": ""]
            // Nothing is served before it is published.
            for name in files.keys {
                #expect(try await get(name, from: server) == Array("1\0".utf8), "\(name) served unpublished")
            }
            shared.publish(contentsOf: files.keys)
            for (name, content) in files {
                #expect(try await get(name, from: server) == Array("0\0\(content)".utf8))
            }
            #expect(try await get("sub/../hello.txt", from: server) == Array("1\0".utf8))
        }
    }

    @Test(arguments: [
        "missing.txt", "../outside/secret.txt", "sub/../../outside/secret.txt", "escape.txt", "sub", "pipe",
        "/dev/zero", "",
    ])
    func refusesWhatIsNotAServedFileEvenWhenPublished(_ name: String) async throws {
        try await withPeer { (shared: SharedFolder, server: PeerFileServer, _: TemporaryDirectory) async throws in
            #expect(try await get(name, from: server) == Array("1\0".utf8), "\(name) must be refused")
            shared.publish(name)
            #expect(try await get(name, from: server) == Array("1\0".utf8), "\(name) must be refused once published")
        }
    }

    @Test(arguments: ["/etc/passwd", "secret.txt", ".hidden"])
    func refusesUnpublishedNames(_ name: String) async throws {
        try await withPeer { (_: SharedFolder, server: PeerFileServer, _: TemporaryDirectory) async throws in
            #expect(try await get(name, from: server) == Array("1\0".utf8), "\(name) must be refused")
        }
    }

    /// The directory server's peer check is answered "no such file", without a log line.
    @Test func answersThePeerCheckQuietly() async throws {
        let folder = try TemporaryDirectory("peer-check")
        defer { folder.remove() }
        let recorder = LogRecorder()
        let server = try await PeerFileServer.start(
            folder: try SharedFolder(path: folder.path), host: "127.0.0.1", logger: recorder.logger())
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: server.port)
        for _ in 0..<3 {
            #expect(
                try await RawConnection.exchange(
                    RawConnection.fields("GET_FILE", ReservedFileName.peerCheck), with: address)
                    == Array("1\0".utf8))
        }
        #expect(recorder.lines.isEmpty, "\(recorder.lines)")
        // A real request for a missing file is still logged (with --verbose).
        #expect(
            try await RawConnection.exchange(RawConnection.fields("GET_FILE", "missing.txt"), with: address)
                == Array("1\0".utf8))
        await server.stop()
        #expect(recorder.lines.contains { $0.contains("missing.txt") })
    }

    @Test func servesAnAbsolutePathOnlyOncePublishedUnderThatName() async throws {
        try await withPeer { (shared: SharedFolder, server: PeerFileServer, folder: TemporaryDirectory) async throws in
            let secret = folder.file("outside/secret.txt")
            #expect(try await get(secret, from: server) == Array("1\0".utf8))
            shared.publish(secret)
            #expect(try await get(secret, from: server) == Array("0\0secret".utf8))
            shared.unpublish(secret)
            #expect(try await get(secret, from: server) == Array("1\0".utf8))
        }
    }

    @Test func malformedRequestGetsOtherError() async throws {
        try await withPeer { (_: SharedFolder, server: PeerFileServer, _: TemporaryDirectory) async throws in
            let reply = try await RawConnection.exchange(
                RawConnection.fields("PUT_FILE", "x"),
                with: try SocketAddress(ipAddress: "127.0.0.1", port: server.port))
            #expect(reply == Array("2\0".utf8))
        }
    }

    @Test func downloaderWritesTheFileAndReportsMissingOnes() async throws {
        try await withPeer { shared, server, folder in
            shared.publish("hello.txt")
            let target = folder.file("downloads/copy.txt")
            let size = try await FileDownloader().download(
                "hello.txt", fromHost: "127.0.0.1", port: server.port, to: target)
            #expect(size == 5)
            #expect(try String(contentsOfFile: target, encoding: .utf8) == "hello")
            await #expect(throws: DownloadError.noSuchFile) {
                try await FileDownloader().download(
                    "nope", fromHost: "127.0.0.1", port: server.port, to: folder.file("downloads/nope"))
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder.file("downloads")) == ["copy.txt"])
        }
    }

    @Test func downloaderAcceptsEveryCodeEncoding() async throws {
        // A raw 00 code, a lone "0" and "0\0": the content after each must come out intact.
        // (After a lone digit a NUL counts as the code's terminator, so the content here
        // starts with another byte.)
        for prefix: [UInt8] in [[0], [0x30], [0x30, 0]] {
            let content: [UInt8] = [5, 0, 1, 2, 0x30, 0xFF]
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let peer = try await ScriptedPeer.start(send: prefix + content, thenReset: false)
            let target = folder.file("out.bin")
            try await FileDownloader().download("f", fromHost: "127.0.0.1", port: peer.port, to: target)
            try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: target)), content, "prefix \(prefix)")
            await peer.stop()
        }
    }

    @Test func transferCutByTheNetworkLeavesNothing() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let peer = try await ScriptedPeer.start(
            send: Array("0\0".utf8) + Array(repeating: 7, count: 200_000), thenReset: true)
        await #expect {
            try await FileDownloader().download("f", fromHost: "127.0.0.1", port: peer.port, to: folder.file("out.bin"))
        } throws: { error in
            if case .interrupted = error as? DownloadError { return true }
            return false
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        await peer.stop()
    }

    @Test func peerThatIsDownGivesUnreachable() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let closed = try ClosedPort()
        await #expect {
            try await FileDownloader().download(
                "f", fromHost: "127.0.0.1", port: closed.port, to: folder.file("x"))
        } throws: { error in
            if case .unreachable = error as? DownloadError { return true }
            return false
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
    }
}

/// A fake peer that answers any connection with fixed bytes, then closes normally or resets.
final class ScriptedPeer: Sendable {
    let port: Int
    private let channel: any Channel

    private init(channel: any Channel) {
        self.channel = channel
        port = channel.localAddress!.port!
    }

    static func start(send bytes: [UInt8], thenReset: Bool) async throws -> ScriptedPeer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(ScriptedReply(bytes: bytes, reset: thenReset))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return ScriptedPeer(channel: channel)
    }

    func stop() async {
        try? await channel.close()
    }
}

private final class ScriptedReply: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let bytes: [UInt8]
    let reset: Bool

    init(bytes: [UInt8], reset: Bool) {
        self.bytes = bytes
        self.reset = reset
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let channel = context.channel
        let reset = self.reset
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: bytes))).whenComplete { _ in
            if reset, let provider = channel as? any SocketOptionProvider {
                // SO_LINGER 0: close sends RST, as when the serving process dies mid-transfer.
                provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
            } else {
                channel.close(promise: nil)
            }
        }
    }
}

@Suite struct DownloaderTimeoutTests {
    @Test func peerThatGoesSilentIsGivenUp() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        // Sends the code and a little content, then neither more bytes nor a close.
        let silent = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(GreetThenWait())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { silent.close(promise: nil) }
        await #expect {
            try await FileDownloader(idleTimeout: .seconds(1)).download(
                "f", fromHost: "127.0.0.1", port: silent.localAddress!.port!, to: folder.file("out"))
        } throws: { error in
            if case .interrupted = error as? DownloadError { return true }
            return false
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
    }
}

/// Writes a code and three bytes when connected, then nothing more.
private final class GreetThenWait: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: Array("0\0abc".utf8))), promise: nil)
    }
}
