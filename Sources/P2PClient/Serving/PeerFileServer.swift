import Foundation
import Logging
import NIOCore
import NIOPosix
import P2PIdentity
import P2PNetworkSupport
import P2PProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A connection that ended before sending a byte (older directory servers checked peers so).
struct PeerConnectionWasEmpty: Error {}

/// The file was shorter than when the upload began (it changed meanwhile).
struct FileShrank: Error, CustomStringConvertible {
    var description: String { "the file shrank while it was being sent" }
}

struct PeerRequestTimedOut: Error, CustomStringConvertible {
    var description: String { "no complete GET_FILE request within 10 s" }
}

/// A value shared by reference between tasks.
final class Box<Value: ~Copyable & Sendable>: Sendable {
    let value: Value
    init(_ value: consuming Value) { self.value = value }
}

/// The downloader took no bytes for the stall timeout: the upload was cut.
struct UploadStalled: Error, CustomStringConvertible {
    var timeout: Duration
    var description: String { "the downloader took nothing for \(timeout); upload cut to free its slot" }
}

/// How much this peer gives to others at once.
public struct UploadLimits: Sendable, Equatable {
    /// `10M` (per second): a number of bytes with an optional K, M or G (powers of 1024).
    public static func parseRate(_ text: String) -> Int? {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var digits = Substring(text.uppercased())
        if digits.hasSuffix("/S") { digits = digits.dropLast(2) }
        if digits.hasSuffix("B") { digits = digits.dropLast() }
        var multiplier = 1
        if let last = digits.last, let unit = units[last] {
            multiplier = unit
            digits = digits.dropLast()
        }
        guard let value = Double(digits), value > 0, value * Double(multiplier) >= 1024 else { return nil }
        return Int(value * Double(multiplier))
    }

    /// Bytes per second for all uploads together; nil for no cap.
    public var bytesPerSecond: Int?
    /// Downloads served at once; more are answered 2 (other error) at once.
    public var maxUploads: Int
    /// Connections from one address at once; more are answered 2 and closed without being
    /// read, so that one peer cannot take every slot.
    public var maxConnectionsPerAddress: Int
    /// An upload whose downloader has taken no bytes for this long is closed and gives its slot
    /// back (a peer that asks for a large file and never reads would hold it for good).
    public var stallTimeout: Duration

    public init(
        bytesPerSecond: Int? = nil, maxUploads: Int = 32, maxConnectionsPerAddress: Int = 8,
        stallTimeout: Duration = .seconds(30)
    ) {
        self.bytesPerSecond = bytesPerSecond
        self.maxUploads = maxUploads
        self.maxConnectionsPerAddress = maxConnectionsPerAddress
        self.stallTimeout = stallTimeout
    }
}

/// Serves this user's files to other peers while it is connected (PROTOCOL.md section 4):
/// reads `"GET_FILE"` `"<name>"`, answers 0 and streams the file with sendfile (never loading
/// it into memory), or answers 1 (no such file) or 2 (other error), then closes. Many peers
/// may download at once. Reserved names carry the directory server's peer check and our
/// peers' extension (``PeerRequest``: a file's size and digest, a range of it).
public final class PeerFileServer: Sendable {
    /// The port peers connect to (chosen by the system).
    public let port: Int
    private let serverChannel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    private let task: Task<Void, Never>
    private let context: Context
    private let accepted: AcceptedConnections

    /// The connections accepted and not yet taken by the accept loop. NIO can accept one just
    /// as the listener closes and then never hand it to the loop (swift-nio #3481); freed
    /// without `executeThenClose`, its writer traps. So each is held here until the loop takes
    /// it, and ``stop()`` closes what is left.
    private final class AcceptedConnections: Sendable {
        private let waiting = Mutex<[ObjectIdentifier: NIOAsyncChannel<ByteBuffer, ByteBuffer>]>([:])

        func add(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) {
            waiting.withLock { $0[ObjectIdentifier(connection.channel)] = connection }
        }

        func take(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) {
            _ = waiting.withLock { $0.removeValue(forKey: ObjectIdentifier(connection.channel)) }
        }

        func takeAll() -> [NIOAsyncChannel<ByteBuffer, ByteBuffer>] {
            waiting.withLock { waiting in
                defer { waiting = [:] }
                return Array(waiting.values)
            }
        }
    }

    /// Connections being served from `address` now.
    func connectionCount(from address: String) -> Int { context.connectionCount(from: address) }

    /// Downloads being served now.
    var uploadCount: Int { context.uploads.load(ordering: .relaxed) }

    /// Where connections that owners open back to this client (for its downloads) arrive.
    var reversedConnections: ReversedConnections { context.reversed }

    /// What every connection needs.
    private final class Context: Sendable {
        let folder: SharedFolder
        let logger: Logger
        let digests = FileDigests()
        let limiter: UploadLimiter?
        let maxUploads: Int
        let maxConnectionsPerAddress: Int
        let stallTimeout: Duration
        /// This client's TLS, when it has an identity to prove (downloaders of a user bound to
        /// a key ask for it, ``PeerRequest/tls``).
        let tls: PeerTLS?
        /// Downloads being served now.
        let uploads = Atomic<Int>(0)
        /// Where uploads are listed (TRANSFERS), if anywhere.
        let transfers: TransferList?
        /// Connections owners opened to this client for its downloads (reversed connections).
        let reversed = ReversedConnections()
        /// The connections being served, to close what is left when the server stops, and how
        /// many come from each address.
        private let open = Mutex<(channels: [ObjectIdentifier: any Channel], perAddress: [String: Int])>(([:], [:]))

        init(folder: SharedFolder, logger: Logger, limits: UploadLimits, tls: PeerTLS?, transfers: TransferList?) {
            self.transfers = transfers
            self.folder = folder
            self.logger = logger
            self.tls = tls
            limiter = limits.bytesPerSecond.map { UploadLimiter(bytesPerSecond: $0) }
            maxUploads = limits.maxUploads
            maxConnectionsPerAddress = limits.maxConnectionsPerAddress
            stallTimeout = limits.stallTimeout
        }

        /// Counts a connection in; false when its address has its share already (nothing counted).
        /// Connections this client opened itself (`address` nil) count only for the stop.
        func admit(_ channel: any Channel, address: String?) -> Bool {
            open.withLock { open in
                if let address {
                    let count = open.perAddress[address, default: 0]
                    guard count < maxConnectionsPerAddress else { return false }
                    open.perAddress[address] = count + 1
                }
                open.channels[ObjectIdentifier(channel)] = channel
                return true
            }
        }

        func release(_ channel: any Channel, address: String?) {
            open.withLock { open in
                open.channels[ObjectIdentifier(channel)] = nil
                if let address {
                    let count = open.perAddress[address, default: 1] - 1
                    open.perAddress[address] = count > 0 ? count : nil
                }
            }
        }

        /// Every connection still served.
        var openChannels: [any Channel] { open.withLock { Array($0.channels.values) } }

        func connectionCount(from address: String) -> Int { open.withLock { $0.perAddress[address, default: 0] } }
    }

    /// Starts listening on `host` on a free port. By default on every address, IPv6 and IPv4
    /// (one dual-stack socket), so that peers reach it at whichever address the directory
    /// recorded; IPv4 only on a machine without IPv6.
    public static func start(
        folder: SharedFolder,
        host: String? = nil,
        limits: UploadLimits = UploadLimits(),
        tls: PeerTLS? = nil,
        transfers: TransferList? = nil,
        logger: Logger
    ) async throws -> PeerFileServer {
        let accepted = AcceptedConnections()
        func bind(_ host: String) async throws -> NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never> {
            try await DualStack.configure(ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton), for: host)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: DualStack.unbracketed(host), port: 0) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let connection = try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                            wrappingChannelSynchronously: channel)
                        accepted.add(connection)
                        return connection
                    }
                }
        }
        let channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
        if let host {
            channel = try await bind(host)
        } else if DualStack.isAvailable, let dualStack = try? await bind(DualStack.anyAddress) {
            channel = dualStack
        } else {
            channel = try await bind("0.0.0.0")
        }
        return PeerFileServer(
            channel: channel, accepted: accepted, folder: folder, limits: limits, tls: tls, transfers: transfers,
            logger: logger)
    }

    private init(
        channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>,
        accepted: AcceptedConnections,
        folder: SharedFolder,
        limits: UploadLimits,
        tls: PeerTLS?,
        transfers: TransferList?,
        logger: Logger
    ) {
        serverChannel = channel
        self.accepted = accepted
        port = channel.channel.localAddress?.port ?? 0
        let context = Context(folder: folder, logger: logger, limits: limits, tls: tls, transfers: transfers)
        self.context = context
        task = Task {
            try? await withThrowingDiscardingTaskGroup { group in
                try await channel.executeThenClose { inbound in
                    for try await connection in inbound {
                        accepted.take(connection)
                        group.addTask { await Self.serve(connection, context) }
                    }
                }
            }
        }
    }

    /// Connects to a downloader that cannot reach this client (the directory server asked, with
    /// `token`: ``ControlMessage/dial(token:host:port:)``), presents the token, and serves the
    /// one request that comes back as if the downloader had connected here.
    public func dial(host: String, port: Int, token: String) async {
        do {
            let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(5))
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            await present(token, on: connection)
        } catch {
            context.logger.notice("cannot connect back to a downloader at \(host):\(port): \(error)")
        }
    }

    /// Presents `token` on a connection this client opened to a downloader (connecting back, or
    /// punched through both NATs) and serves the request that comes back on it. For a relayed
    /// connection (`relayed`), the server's 0 comes first.
    public func present(_ token: String, on connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>, relayed: Bool = false)
        async
    {
        guard let hello = PeerRequest.reversed(token: token).fileName else { return }
        var bytes = ByteBuffer()
        guard (try? FileRequest(fileName: hello).encode(into: &bytes)) != nil else { return }
        let helloBytes = bytes
        await Self.serve(connection, context) { inbound, outbound in
            if relayed {
                let code = try await inbound.readCode()
                guard code == .ok else {
                    throw DownloadError.unreachable("the relay answered \(code.map { "\($0)" } ?? "nothing")")
                }
            }
            try await outbound.write(helloBytes)
        }
    }

    /// How long ``stop()`` lets transfers in progress go on before it closes them: DISCONNECT
    /// and QUIT must answer promptly whatever peers are doing.
    static let stopGrace: Duration = .milliseconds(500)

    /// Stops accepting peers; transfers still in progress after a short grace are cut (their
    /// downloaders see a reset, as for any interrupted transfer).
    public func stop() async {
        try? await serverChannel.channel.close()
        let task = self.task
        // Not a task group: it would wait for the child awaiting `task.value`, grace or not.
        let finished = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let decided = Box(Atomic<Bool>(false))
            Task {
                await task.value
                if !decided.value.exchange(true, ordering: .acquiringAndReleasing) {
                    continuation.resume(returning: true)
                }
            }
            Task {
                try? await Task.sleep(for: Self.stopGrace)
                if !decided.value.exchange(true, ordering: .acquiringAndReleasing) {
                    continuation.resume(returning: false)
                }
            }
        }
        if !finished {
            // Connections parked for downloads wait on the token table, not on their channel.
            context.reversed.releaseAll()
            for channel in context.openChannels { PeerTLS.cut(channel) }
        }
        await task.value
        for connection in accepted.takeAll() {
            try? await connection.executeThenClose { _, _ in }
        }
    }

    /// A connection this client opened to serve a downloader: what comes first on it (the token,
    /// and for a relay the server's 0 before it), before the downloader's request.
    typealias Prelude = @Sendable (PeerLink.Inbound, NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws -> Void

    private static func serve(
        _ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>, _ context: Context, prelude: Prelude? = nil
    ) async {
        let logger = context.logger
        let channel = connection.channel
        let peer = channel.remoteAddress?.description ?? "?"
        // Connections this client opened (a prelude) are not a peer's to count.
        let address = prelude == nil ? channel.remoteAddress?.ipAddress ?? "?" : nil
        guard context.admit(channel, address: address) else {
            logger.notice(
                """
                GET_FILE from \(peer): refused, \(context.maxConnectionsPerAddress) connections from that address \
                already
                """
            )
            // The answer, then FIN, and what the peer sent is read (for at most 2 s) before the
            // close: closing on unread bytes would reset the connection and lose the answer.
            try? await connection.executeThenClose { inbound, outbound in
                var buffer = ByteBuffer()
                ReplyEncoder().writeCode(FileReplyCode.otherError, into: &buffer)
                try await outbound.write(buffer)
                try await channel.close(mode: .output)
                try await withTimeout(.seconds(2), error: PeerRequestTimedOut()) {
                    for try await _ in inbound {}
                }
            }
            return
        }
        defer { context.release(channel, address: address) }
        // Until the whole file is handed to the kernel, closing (also by a crash of this
        // process) resets the connection, so the downloader can tell a cut transfer from a
        // complete one: the protocol carries no length.
        _ = try? await (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
        do {
            try await connection.executeThenClose { inbound, outbound in
                var request: FileRequest
                // One reader at a time: this task, or the download a reversed connection is for.
                let box = PeerLink.Inbound(inbound.makeAsyncIterator())
                try await prelude?(box, outbound)
                // The key a downloader proved over TLS, once it asked for TLS.
                var downloaderKey: Data?
                while true {
                    do {
                        // A peer that never completes its request is dropped after 10 s.
                        request = try await withTimeout(.seconds(10), error: PeerRequestTimedOut()) {
                            var decoder = FileRequestDecoder()
                            var sawBytes = false
                            while var chunk = try await box.next() {
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
                    // TLS once, then the downloader's request inside it.
                    guard downloaderKey == nil, let tls = context.tls, PeerRequest(fileName: request.fileName) == .tls
                    else { break }
                    do {
                        downloaderKey = try await withTimeout(.seconds(10), error: PeerRequestTimedOut()) {
                            try await tls.accept(on: channel)
                        }
                    } catch {
                        logger.notice("TLS with \(peer) failed: \(error)")
                        return
                    }
                }
                // The downloader as the log shows it (with --verbose): its address, and the key
                // it proved when it came over TLS.
                let downloader =
                    downloaderKey.map { "\(peer) (TLS, key \(IdentityKey.fingerprint(ofPublicKey: $0)))" } ?? peer
                let name: String
                var range: (offset: Int64, length: Int64)?
                switch PeerRequest(fileName: request.fileName) {
                case nil:
                    name = request.fileName
                case .reversed(let token)?:
                    // An owner connecting back for one of our downloads: it is the download's now.
                    try await closeGracefully(channel)
                    await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
                        let once = Atomic<Bool>(false)
                        let handed = ReversedConnections.Handed(
                            link: box, outbound: outbound, channel: channel,
                            done: { if !once.exchange(true, ordering: .relaxed) { finished.resume() } })
                        if !context.reversed.deliver(token, handed) { handed.done() }
                    }
                    return
                case .peerCheck?, .unknownReserved?, .tls?:
                    // The directory server's peer check, many a minute: answered without a log
                    // line and without touching the disk.
                    try await Self.finish(channel, code: FileReplyCode.noSuchFile)
                    return
                case .info(let file)?:
                    try await Self.sendInfo(file, on: channel, context)
                    return
                case .range(let offset, let length, let file)?:
                    name = file
                    range = (offset, length)
                }
                let opened = try await BlockingWork.run { context.folder.open(name) }
                guard let (descriptor, size) = opened else {
                    logger.info("GET_FILE \(name) from \(downloader): no such file")
                    try await Self.finish(channel, code: FileReplyCode.noSuchFile)
                    return
                }
                let handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: descriptor)
                defer { try? handle.close() }
                let start = range?.offset ?? 0
                // No overflow: PeerRequest refuses a range whose end is not an Int64.
                let end = range.map { $0.offset + $0.length } ?? Int64(size)
                guard start <= Int64(size), end <= Int64(size) else {
                    logger.info("GET_FILE \(name) from \(peer): range \(start)-\(end) outside its \(size) bytes")
                    try await Self.finish(channel, code: FileReplyCode.otherError)
                    return
                }
                guard context.uploads.wrappingAdd(1, ordering: .relaxed).newValue <= context.maxUploads else {
                    context.uploads.wrappingSubtract(1, ordering: .relaxed)
                    logger.notice("GET_FILE \(name) from \(peer): refused, \(context.maxUploads) uploads already")
                    try await Self.finish(channel, code: FileReplyCode.otherError)
                    return
                }
                defer { context.uploads.wrappingSubtract(1, ordering: .relaxed) }
                var code = ByteBuffer()
                ReplyEncoder().writeCode(FileReplyCode.ok, into: &code)
                channel.write(IOData.byteBuffer(code), promise: nil)
                let listed = context.transfers
                let upload = listed?.start(.upload, file: name, peers: [downloader], total: end - start)
                do {
                    try await Self.send(
                        handle, from: Int(start), to: Int(end), on: channel, limiter: context.limiter,
                        stallTimeout: context.stallTimeout, encrypted: downloaderKey != nil,
                        sent: { bytes in if let upload { listed?.progress(upload, bytes: bytes) } })
                } catch {
                    if let upload { listed?.end(upload, .failed(reason: "\(error)")) }
                    throw error
                }
                if let upload { listed?.end(upload, .done(verified: false)) }
                logger.info("GET_FILE \(name) to \(downloader): \(end - start) bytes")
                try await Self.closeGracefully(channel)
            }
        } catch {
            logger.notice("GET_FILE for \(peer) failed: \(error)")
        }
    }

    /// Bytes handed to sendfile at once without an upload cap: each slice must be taken by the
    /// downloader within the stall timeout. Two are in flight, so the socket never runs dry
    /// between them.
    static let sendSlice = 8 << 20

    /// Bytes read and encrypted at once under TLS: two in flight, 8 MiB an upload holds. Smaller
    /// slices leave the connection idle while the next one is read (`make bench`, tls).
    static let encryptedSlice = 4 << 20

    /// Reads for uploads over TLS, on NIO's thread pool.
    private static let fileIO = NonBlockingFileIO(threadPool: .singleton)

    /// Bytes `start..<end` of the file with sendfile, in slices: as fast as the downloader takes
    /// them, or on the upload limiter's schedule. A slice not taken within `stallTimeout`
    /// closes the connection.
    private static func send(
        _ handle: NIOFileHandle, from start: Int, to end: Int, on channel: any Channel, limiter: UploadLimiter?,
        stallTimeout: Duration, encrypted: Bool, sent: (Int64) -> Void = { _ in }
    ) async throws {
        guard end > start else {
            try await channel.writeAndFlush(IOData.byteBuffer(ByteBuffer())).get()
            return
        }
        let timeout = TimeAmount.nanoseconds(
            stallTimeout.components.seconds * 1_000_000_000 + stallTimeout.components.attoseconds / 1_000_000_000)
        /// Waits for `write`, closing the connection when it is not done within the timeout.
        func taken(_ write: EventLoopFuture<Void>) async throws {
            let stalled = channel.eventLoop.scheduleTask(in: timeout) { PeerTLS.cut(channel) }
            defer { stalled.cancel() }
            do {
                try await write.get()
            } catch {
                throw channel.isActive ? error : UploadStalled(timeout: stallTimeout)
            }
        }
        /// Writes bytes `from..<to`: handed to sendfile, or, under TLS (which must see the bytes to
        /// encrypt them), read into memory first.
        func write(_ from: Int, _ to: Int) async throws -> EventLoopFuture<Void> {
            guard encrypted else {
                return channel.writeAndFlush(
                    IOData.fileRegion(FileRegion(fileHandle: handle, readerIndex: from, endIndex: to)))
            }
            let bytes = try await fileIO.read(
                fileHandle: handle, fromOffset: Int64(from), byteCount: to - from, allocator: channel.allocator)
            guard bytes.readableBytes == to - from else { throw FileShrank() }
            return channel.writeAndFlush(bytes)
        }
        guard let limiter else {
            var inFlight: [EventLoopFuture<Void>] = []
            var offset = start
            let sliceSize = encrypted ? encryptedSlice : sendSlice
            while offset < end {
                let next = min(end, offset + sliceSize)
                inFlight.append(try await write(offset, next))
                // The slice before this one was taken.
                if inFlight.count == 2 {
                    try await taken(inFlight.removeFirst())
                    sent(Int64(offset - start))
                }
                offset = next
            }
            for write in inFlight { try await taken(write) }
            return
        }
        // Slices of about 50 ms at the cap: the rate holds over short spans too.
        let slice = max(16 * 1024, min(1 << 20, limiter.bytesPerSecond / 20))
        var offset = start
        while offset < end {
            let next = min(end, offset + slice)
            let due = limiter.reserve(next - offset)
            if due > .now { try await Task.sleep(until: due) }
            try await taken(try await write(offset, next))
            offset = next
            sent(Int64(offset - start))
        }
    }

    /// Answers an info request: the file's size and SHA-256, or 1 when it is not served.
    private static func sendInfo(_ name: String, on channel: any Channel, _ context: Context) async throws {
        let opened = try await BlockingWork.run { context.folder.open(name) }
        guard let (descriptor, size) = opened else {
            try await Self.finish(channel, code: FileReplyCode.noSuchFile)
            return
        }
        defer { close(descriptor) }
        let path = context.folder.resolve(name) ?? name
        let digest: String
        do {
            digest = try await context.digests.digest(path: path, descriptor: descriptor)
        } catch {
            context.logger.notice("digest of \(name): \(error)")
            try await Self.finish(channel, code: FileReplyCode.otherError)
            return
        }
        var buffer = ByteBuffer()
        try FileInfo(size: Int64(size), sha256: digest).encode(into: &buffer)
        try await channel.writeAndFlush(IOData.byteBuffer(buffer)).get()
        try await closeGracefully(channel)
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
