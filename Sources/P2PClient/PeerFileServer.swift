import Logging
import NIOCore
import NIOPosix
import P2PNetworkSupport
import P2PProtocol

/// A connection that ended before sending a byte (older directory servers checked peers so).
struct PeerConnectionWasEmpty: Error {}

struct PeerRequestTimedOut: Error, CustomStringConvertible {
    var description: String { "no complete GET_FILE request within 10 s" }
}

/// Serves this user's files to other peers while it is connected (PROTOCOL.md section 4):
/// reads `"GET_FILE"` `"<name>"`, answers 0 and streams the file with sendfile (never loading
/// it into memory), or answers 1 (no such file) or 2 (other error), then closes. Many peers
/// may download at once.
public final class PeerFileServer: Sendable {
    /// The port peers connect to (chosen by the system).
    public let port: Int
    private let serverChannel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    private let task: Task<Void, Never>

    /// Starts listening on `host` (all interfaces by default) on a free port.
    public static func start(
        folder: SharedFolder,
        host: String = "0.0.0.0",
        logger: Logger
    ) async throws -> PeerFileServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return PeerFileServer(channel: channel, folder: folder, logger: logger)
    }

    private init(
        channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>,
        folder: SharedFolder,
        logger: Logger
    ) {
        serverChannel = channel
        port = channel.channel.localAddress?.port ?? 0
        task = Task {
            try? await withThrowingDiscardingTaskGroup { group in
                try await channel.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await Self.serve(connection, folder: folder, logger: logger) }
                    }
                }
            }
        }
    }

    /// Stops accepting peers; transfers in progress finish.
    public func stop() async {
        try? await serverChannel.channel.close()
        await task.value
    }

    private static func serve(
        _ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>,
        folder: SharedFolder,
        logger: Logger
    ) async {
        let channel = connection.channel
        let peer = channel.remoteAddress?.description ?? "?"
        // Until the whole file is handed to the kernel, closing (also by a crash of this
        // process) resets the connection, so the downloader can tell a cut transfer from a
        // complete one: the protocol carries no length.
        _ = try? await (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
        do {
            try await connection.executeThenClose { inbound, _ in
                let request: FileRequest
                do {
                    // A peer that never completes its request is dropped after 10 s.
                    request = try await withTimeout(.seconds(10), error: PeerRequestTimedOut()) {
                        var decoder = FileRequestDecoder()
                        var sawBytes = false
                        for try await var chunk in inbound {
                            sawBytes = true
                            if let request = try decoder.decode(&chunk) { return request }
                        }
                        if !sawBytes { throw PeerConnectionWasEmpty() }
                        throw decoder.finish()
                    }
                } catch is PeerConnectionWasEmpty {
                    // Nothing to answer (how directory servers before the GET_FILE check probed).
                    logger.debug("empty connection from \(peer)")
                    return
                } catch {
                    logger.notice("bad GET_FILE request from \(peer): \(error)")
                    try await Self.finish(channel, code: FileReplyCode.otherError)
                    return
                }
                let name = request.fileName
                if ReservedFileName.isReserved(name) {
                    // The directory server's peer check, many a minute: answered without a log
                    // line and without touching the disk.
                    try await Self.finish(channel, code: FileReplyCode.noSuchFile)
                    return
                }
                let opened = try await NIOThreadPool.singleton.runIfActive { folder.open(name) }
                guard let (descriptor, size) = opened else {
                    logger.info("GET_FILE \(name) from \(peer): no such file")
                    try await Self.finish(channel, code: FileReplyCode.noSuchFile)
                    return
                }
                let handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: descriptor)
                defer { try? handle.close() }
                var code = ByteBuffer()
                ReplyEncoder().writeCode(FileReplyCode.ok, into: &code)
                channel.write(IOData.byteBuffer(code), promise: nil)
                if size > 0 {
                    let region = FileRegion(fileHandle: handle, readerIndex: 0, endIndex: size)
                    try await channel.writeAndFlush(IOData.fileRegion(region)).get()
                } else {
                    try await channel.writeAndFlush(IOData.byteBuffer(ByteBuffer())).get()
                }
                logger.info("GET_FILE \(name) to \(peer): \(size) bytes")
                try await Self.closeGracefully(channel)
            }
        } catch {
            logger.notice("GET_FILE for \(peer) failed: \(error)")
        }
    }

    /// Sends a bare result code and closes.
    private static func finish(_ channel: any Channel, code: ResultCode) async throws {
        var buffer = ByteBuffer()
        ReplyEncoder().writeCode(code, into: &buffer)
        try await channel.writeAndFlush(IOData.byteBuffer(buffer)).get()
        try await closeGracefully(channel)
    }

    /// Everything was handed to the kernel: turn the reset-on-close off so the peer gets the
    /// rest of the bytes and a normal end of stream.
    private static func closeGracefully(_ channel: any Channel) async throws {
        try await (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 0, l_linger: 0)).get()
    }
}
