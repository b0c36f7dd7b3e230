import Foundation
import NIOCore
import NIOPosix
import P2PClient
import P2PTestSupport
import Synchronization
import Testing

/// Downloads from stand-in owners that frame GET_FILE's answer each the way one family of
/// implementations does (docs/PROTOCOL.md, "How owners frame the file"): every file arrives
/// byte for byte, and a cut size-prefixed one leaves nothing behind.
@Suite struct OwnerFramingTests {
    enum Framing: String, CaseIterable, Sendable {
        /// `0·` then the bytes until close (ours, one Python client).
        case digitNULUntilClose
        /// `0·`, the content, one NUL, close (a Python client that sends the file as a C string).
        case cString
        /// `0`, the size in digits, `·`, exactly that many bytes (a newer version of the exercise).
        case sizePrefixed
        /// The byte 0x00, then the bytes until close.
        case rawCode

        func reply(to content: [UInt8]?) -> [UInt8] {
            guard let content else { return self == .rawCode ? [1] : Array("1\0".utf8) }
            switch self {
            case .digitNULUntilClose: return Array("0\0".utf8) + content
            case .cString: return Array("0\0".utf8) + content + [0]
            case .sizePrefixed: return Array("0\(content.count)\0".utf8) + content
            case .rawCode: return [0] + content
            }
        }
    }

    static let files: [String: [UInt8]] = [
        "text.txt": Array("Crème brûlée à Zürich; 日本語のテキスト; Ελληνικά; русский\n".utf8),
        "empty.txt": [],
        "nuls.bin": (0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 3 == 0 ? 0 : $0 &* 31) },
        "tar.bin": (0..<5000).map { UInt8(truncatingIfNeeded: $0 % 250 + 1) } + [UInt8](repeating: 0, count: 1024),
    ]

    /// An owner on 127.0.0.1: reads `GET_FILE` and a name, answers in `framing`, and closes
    /// (after `cutAfter` bytes of the reply when given, as an owner whose user pressed Ctrl+C).
    final class Owner: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let framing: Framing
        let cutAfter: Int?
        private let received = Mutex(ByteBuffer())

        init(framing: Framing, cutAfter: Int?) {
            self.framing = framing
            self.cutAfter = cutAfter
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var chunk = unwrapInboundIn(data)
            let request = received.withLock { buffer -> [UInt8]? in
                buffer.writeBuffer(&chunk)
                let bytes = Array(buffer.readableBytesView)
                return bytes.filter { $0 == 0 }.count >= 2 ? bytes : nil
            }
            guard let request else { return }
            let name = String(decoding: request.split(separator: 0, omittingEmptySubsequences: false)[1], as: UTF8.self)
            var reply = framing.reply(to: OwnerFramingTests.files[name])
            if let cutAfter { reply = Array(reply.prefix(cutAfter)) }
            let channel = context.channel
            context.writeAndFlush(NIOAny(ByteBuffer(bytes: reply))).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    static func start(_ framing: Framing, cutAfter: Int? = nil) async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(Owner(framing: framing, cutAfter: cutAfter))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    @Test(arguments: Framing.allCases)
    func everyFileArrivesExactly(_ framing: Framing) async throws {
        let folder = try TemporaryDirectory("framing")
        defer { folder.remove() }
        let owner = try await Self.start(framing)
        let port = owner.localAddress!.port!
        for (name, content) in Self.files {
            // A C-string owner cannot serve binaries: it would cut them at their first NUL.
            if framing == .cString && content.contains(0) { continue }
            let target = folder.file("copy-\(name)")
            let size = try await FileDownloader().download(name, fromHost: "127.0.0.1", port: port, to: target)
            try expectSameBytes(Data(contentsOf: URL(fileURLWithPath: target)), content, "\(framing) \(name)")
            #expect(size == Int64(content.count))
        }
        await #expect(throws: DownloadError.noSuchFile) {
            try await FileDownloader().download("missing", fromHost: "127.0.0.1", port: port, to: folder.file("m"))
        }
        #expect(!FileManager.default.fileExists(atPath: folder.file("m")))
        try await owner.close()
    }

    @Test func aSizePrefixedOwnerThatStopsHalfwayLeavesNothing() async throws {
        let folder = try TemporaryDirectory("framing-cut")
        defer { folder.remove() }
        let content = Self.files["nuls.bin"]!
        let header = Array("0\(content.count)\0".utf8).count
        let owner = try await Self.start(.sizePrefixed, cutAfter: header + content.count / 2)
        await #expect {
            try await FileDownloader().download(
                "nuls.bin", fromHost: "127.0.0.1", port: owner.localAddress!.port!, to: folder.file("copy.bin"))
        } throws: { error in
            guard case .interrupted(let received, _) = error as? DownloadError else { return false }
            return received == Int64(content.count / 2)
        }
        // Neither the file nor its temporary file.
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        try await owner.close()
    }
}
