import Foundation
import NIOCore
import NIOPosix
import P2PNetworkSupport
import P2PProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Why a GET_FILE download did not produce the local file.
public enum DownloadError: Error, Equatable, CustomStringConvertible {
    /// The peer answered 1: it has no such file.
    case noSuchFile
    /// The peer answered another non-zero code.
    case refused(ResultCode)
    case unreachable(String)
    /// The connection broke before the peer finished (`received` bytes had arrived).
    case interrupted(received: Int64, reason: String)
    case invalidReply(String)
    /// The local file could not be written.
    case localFile(String)
    /// The announced size is beyond what this client accepts (`--max-download-size`) or beyond
    /// the free space where the file goes: why.
    case tooLarge(size: Int64, reason: String)
    /// The whole file arrived but its SHA-256 is not the one its owners announced.
    case digestMismatch(expected: String, got: String)
    /// The peer did not prove the owner's key (or does not offer TLS to prove it with): why.
    case unverified(String)

    public var description: String {
        switch self {
        case .noSuchFile: return "the peer has no such file"
        case .refused(let code): return "the peer answered code \(code)"
        case .unreachable(let reason): return "peer unreachable: \(reason)"
        case .interrupted(let received, let reason): return "transfer cut after \(received) bytes: \(reason)"
        case .invalidReply(let reason): return "invalid reply from the peer: \(reason)"
        case .localFile(let reason): return "cannot write the local file: \(reason)"
        case .tooLarge(let size, let reason): return "the owner announces \(size) bytes, \(reason); nothing was written"
        case .digestMismatch(let expected, let got):
            return
                "the file arrived damaged: its SHA-256 is \(got.prefix(16))..., the owner's \(expected.prefix(16))...; "
                + "nothing was kept"
        case .unverified(let reason): return "\(reason); nothing was downloaded"
        }
    }
}

/// Downloads a file from a peer (PROTOCOL.md section 4) into a temporary file next to the
/// destination and renames it into place only when the transfer completed; on any failure
/// nothing is left behind. Memory use is bounded by the write buffer, whatever the file size.
public struct FileDownloader: Sendable {
    /// Bytes gathered before one write to disk.
    static let writeChunk = 1 << 20

    /// A peer that sends nothing for this long is given up on (a vanished host sends no FIN).
    public var idleTimeout: TimeAmount

    /// Called now and then with the bytes received so far, and the file's size when known.
    public typealias Progress = @Sendable (_ bytes: Int64, _ total: Int64?) -> Void

    /// The largest file accepted from an owner that announces its size; nil: what fits on the
    /// disk. A larger announcement fails the download before anything is written.
    public var maxSize: Int64?

    public init(idleTimeout: TimeAmount = .seconds(30), maxSize: Int64? = nil) {
        self.idleTimeout = idleTimeout
        self.maxSize = maxSize
    }

    /// The temporary files of downloads in progress in this process.
    private static let unfinished = Mutex<Set<String>>([])

    /// Removes the temporary file of every download still in progress; for a client that is
    /// about to exit (QUIT, Ctrl+C) in the middle of a GET_FILE. Returns how many it removed.
    @discardableResult
    public static func discardUnfinished() -> Int {
        unfinished.withLock { paths in
            for path in paths { unlink(path) }
            defer { paths.removeAll() }
            return paths.count
        }
    }

    /// Fetches `remoteName` from the peer at `host`:`port` into `localPath`; returns the size.
    @discardableResult
    public func download(
        _ remoteName: String,
        fromHost host: String,
        port: Int,
        to localPath: String,
        progress: Progress? = nil
    ) async throws(DownloadError) -> Int64 {
        try await download(
            remoteName, from: PeerSource(owner: host, host: host, port: port), to: localPath, progress: progress)
    }

    /// Fetches `remoteName` from `source` into `localPath` with plain GET_FILE; returns the size.
    @discardableResult
    public func download(
        _ remoteName: String,
        from source: PeerSource,
        to localPath: String,
        progress: Progress? = nil
    ) async throws(DownloadError) -> Int64 {
        let url = URL(fileURLWithPath: localPath)
        let directory = url.deletingLastPathComponent().path
        let temporary = "\(directory)/.\(url.lastPathComponent).part-\(UInt32.random(in: 0...UInt32.max))"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw .localFile("\(temporary): \(String(cString: strerror(errno)))") }
        Self.unfinished.withLock { _ = $0.insert(temporary) }
        defer { Self.unfinished.withLock { _ = $0.remove(temporary) } }
        let file = LocalFile(descriptor: descriptor)
        do {
            let size = try await receive(remoteName, from: source, into: file, progress: progress)
            try await BlockingWork.run {
                try file.sync()
                try file.close()
                guard rename(temporary, localPath) == 0 else {
                    throw DownloadError.localFile("\(localPath): \(String(cString: strerror(errno)))")
                }
            }
            return size
        } catch {
            try? file.close()
            unlink(temporary)
            if let error = error as? DownloadError { throw error }
            throw .localFile("\(error)")
        }
    }

    /// The size and SHA-256 that a peer of ours announces for `remoteName`; nil from a peer
    /// that does not know the extension (it answers FILE NOT EXIST to the reserved name, read to
    /// the end before closing), one that does not serve the file, or one that does not answer.
    public func info(of remoteName: String, from source: PeerSource, timeout: Duration = .seconds(60)) async
        -> FileInfo?
    {
        guard let name = PeerRequest.info(name: remoteName).fileName else { return nil }
        var request = ByteBuffer()
        guard (try? FileRequest(fileName: name).encode(into: &request)) != nil else { return nil }
        let bytes = request
        let idleTimeout = self.idleTimeout
        return try? await withTimeout(timeout, error: DownloadError.unreachable("no answer")) {
            try await PeerConnection.withLink(to: source, idleTimeout: idleTimeout) { link in
                try await link.write(bytes)
                var decoder = FileInfoDecoder()
                var outcome: FileInfoDecoder.Outcome?
                // The whole reply, to the peer's close: a third-party peer must not meet a
                // connection closed before its answer is out.
                while var chunk = try await link.next() {
                    if outcome == nil { outcome = try decoder.decode(&chunk) }
                }
                if case .info(let info)? = outcome { return info }
                return nil
            }
        }
    }

    /// Downloads `remoteName` from whichever `sources` are peers of ours with the same file
    /// (size and SHA-256), several at once, resuming an interrupted download into the same
    /// local name and verifying the result; from a peer that does not know the extension, as
    /// plain GET_FILE from the first source. `notice` gets what the user should know (on stderr).
    @discardableResult
    public func fetch(
        _ remoteName: String, from sources: [PeerSource], to localPath: String, progress: Progress? = nil,
        notice: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws(DownloadError) -> Fetched {
        guard let first = sources.first else { throw .unreachable("no source") }
        let infos = await withTaskGroup(of: (Int, FileInfo?).self) { group in
            for (index, source) in sources.enumerated() {
                group.addTask { (index, await info(of: remoteName, from: source)) }
            }
            var found = [FileInfo?](repeating: nil, count: sources.count)
            for await (index, info) in group { found[index] = info }
            return found
        }
        guard let reference = infos.compactMap({ $0 }).first else {
            if sources.count > 1 {
                notice(
                    "\(remoteName): none of \(sources.map(\.owner).joined(separator: ", ")) can serve parts of it; "
                        + "downloading from \(first.owner) alone")
            }
            return Fetched(
                size: try await download(remoteName, from: first, to: localPath, progress: progress), verified: false)
        }
        var usable: [PeerSource] = []
        for (source, info) in zip(sources, infos) {
            if info == reference {
                usable.append(source)
            } else if sources.count > 1 {
                notice(
                    "\(source.owner) is left out: "
                        + (info == nil ? "no part of \(remoteName) from it" : "its copy differs"))
            }
        }
        let download = RangedDownload(
            remoteName: remoteName, info: reference, sources: usable, localPath: localPath, idleTimeout: idleTimeout,
            maxSize: maxSize, progress: progress, notice: notice)
        Self.resumable.withLock { _ = $0.insert(download.partialPath) }
        defer { Self.resumable.withLock { _ = $0.remove(download.partialPath) } }
        return Fetched(size: try await download.run(), verified: true)
    }

    /// What a download got: its size, and whether it was checked against the SHA-256 its owners
    /// announced (our peers; a third-party peer's plain GET_FILE cannot be).
    public struct Fetched: Sendable, Equatable {
        public var size: Int64
        public var verified: Bool
    }

    /// The partial files of ranged downloads in progress, kept when the client is stopped.
    private static let resumable = Mutex<Set<String>>([])

    /// How many ranged downloads are in progress (their partial files stay for a later resume).
    public static var resumableInProgress: Int { resumable.withLock { $0.count } }

    private func receive(
        _ remoteName: String, from source: PeerSource, into file: LocalFile, progress: Progress?
    ) async throws -> Int64 {
        var request = ByteBuffer()
        do {
            try FileRequest(fileName: remoteName).encode(into: &request)
        } catch {
            throw DownloadError.invalidReply("request not sendable: \(error)")
        }
        let bytes = request
        do {
            return try await PeerConnection.withLink(to: source, idleTimeout: idleTimeout) { link in
                try await transfer(bytes, over: link, into: file, progress: progress)
            }
        } catch let error as DownloadError {
            throw error
        } catch {
            throw DownloadError.interrupted(received: 0, reason: "\(error)")
        }
    }

    private func transfer(
        _ bytes: ByteBuffer, over link: PeerLink, into file: LocalFile,
        progress: Progress?
    ) async throws -> Int64 {
        do {
            try await link.write(bytes)
            // Every framing owners use is told apart by its bytes (FileReplyDecoder).
            var decoder = FileReplyDecoder()
            var pending = ByteBuffer()
            var lastReport = ContinuousClock.now
            do {
                reading: while var chunk = try await link.next() {
                    switch try decoder.decode(&chunk, into: &pending) {
                    case .refused(let code):
                        throw code == FileReplyCode.noSuchFile ? DownloadError.noSuchFile : DownloadError.refused(code)
                    case .complete:
                        break reading
                    case .needMore:
                        break
                    }
                    if pending.readableBytes >= Self.writeChunk {
                        try await file.write(pending)
                        pending.clear()
                    }
                    if let progress, ContinuousClock.now - lastReport > .milliseconds(250) {
                        lastReport = ContinuousClock.now
                        progress(decoder.received, nil)
                    }
                }
                try decoder.finish(into: &pending)
            } catch let error as DownloadError {
                throw error
            } catch FileReplyError.cut(let expected, let received) {
                throw DownloadError.interrupted(
                    received: received, reason: "the peer announced \(expected) bytes and closed")
            } catch let error as FileReplyError {
                throw DownloadError.invalidReply("\(error)")
            } catch {
                throw DownloadError.interrupted(received: decoder.received, reason: shortDescription(of: error))
            }
            try await file.write(pending)
            progress?(decoder.received, nil)
            return decoder.received
        }
    }
}

/// Turns a read-idle event into an error, which ends the transfer.
final class ReadTimeoutHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    struct TimedOut: Error, CustomStringConvertible {
        var description: String { "the peer stopped sending" }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? IdleStateHandler.IdleStateEvent, event == .read {
            context.fireErrorCaught(TimedOut())
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// A file being written on NIO's thread pool (disk writes never run on an event loop or in
/// the concurrency pool).
private final class LocalFile: Sendable {
    let descriptor: Int32
    private let closed = Atomic<Bool>(false)

    init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    func write(_ buffer: ByteBuffer) async throws {
        guard buffer.readableBytes > 0 else { return }
        try await BlockingWork.run {
            try buffer.withUnsafeReadableBytes { bytes in
                var offset = 0
                while offset < bytes.count {
                    let written = Glibc.write(self.descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                    if written < 0 {
                        if errno == EINTR { continue }
                        throw DownloadError.localFile(String(cString: strerror(errno)))
                    }
                    offset += written
                }
            }
        }
    }

    func sync() throws {
        guard fsync(descriptor) == 0 else { throw DownloadError.localFile(String(cString: strerror(errno))) }
    }

    /// Closes once; later calls do nothing.
    func close() throws {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        _ = Glibc.close(descriptor)
    }
}
