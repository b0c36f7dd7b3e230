import Crypto
import Dispatch
import Foundation
import NIOCore
import NIOPosix
import P2PNetworkSupport
import P2PProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A peer to download from.
public struct PeerSource: Sendable, Hashable {
    /// The owner's user name (for messages).
    public var owner: String
    public var host: String
    public var port: Int
    /// Set for an owner behind a NAT: connections come from it, at the server's request.
    public var reversal: Reversal?
    /// Set when the owner and this client are both behind NATs: connections are punched.
    public var punch: HolePunch?
    /// Set for an owner bound to a key: its public key (base64, from the directory) and this
    /// client's TLS, with which every connection to it is encrypted and the key checked.
    public var pin: PeerPin?

    public init(owner: String, host: String, port: Int, reversal: Reversal? = nil, punch: HolePunch? = nil) {
        self.owner = owner
        self.host = host
        self.port = port
        self.reversal = reversal
        self.punch = punch
    }
}

/// What a connection to an owner bound to a key must prove: the key the directory holds for it
/// (base64), checked by this client's TLS.
public struct PeerPin: Sendable, Hashable {
    public var key: String
    public var tls: PeerTLS

    public init(key: String, tls: PeerTLS) {
        self.key = key
        self.tls = tls
    }
}

/// A download between peers of ours (docs/PROTOCOL.md, "Extension: file info and ranges"): the
/// file is fetched in chunks, from one source or several at once (each source takes the next
/// chunk when it finishes one, so a slow source takes fewer and a vanished one's chunk goes
/// back to the others), written in place into a hidden partial file, hashed in order while the
/// rest arrives, and checked against the SHA-256 the owners announced before it takes the
/// destination name.
///
/// Interrupted, it keeps the partial file and a small record beside it (the owners, the name,
/// the size and digest expected, the chunks that arrived): the next GET_FILE into the same local
/// name continues from there, from any of our peers with the same digest.
struct RangedDownload: Sendable {
    /// Bytes per chunk: a cut costs at most this much again; small enough to spread a file over
    /// several sources, large enough that a new connection per chunk costs nothing.
    static let chunkSize: Int64 = 4 << 20

    let remoteName: String
    let info: FileInfo
    let sources: [PeerSource]
    let localPath: String
    let idleTimeout: TimeAmount
    let maxSize: Int64?
    let progress: FileDownloader.Progress?
    let notice: @Sendable (String) -> Void

    var partialPath: String { Self.partialPath(for: localPath) }
    var recordPath: String { partialPath + ".info" }

    static func partialPath(for localPath: String) -> String {
        let url = URL(fileURLWithPath: localPath)
        return url.deletingLastPathComponent().path + "/." + url.lastPathComponent + ".p2p-partial"
    }

    /// What is kept beside a partial file: enough to continue it.
    struct Record: Equatable {
        var owners: [String]
        var remoteName: String
        var size: Int64
        var sha256: String
        var done: Set<Int>

        var text: String {
            "p2p-partial 1\nowners \(owners.joined(separator: ","))\nname \(remoteName)\n"
                + "size \(size)\nsha256 \(sha256)\n"
                + "done \(done.sorted().map(String.init).joined(separator: ","))\n"
        }

        init(owners: [String], remoteName: String, size: Int64, sha256: String, done: Set<Int>) {
            self.owners = owners
            self.remoteName = remoteName
            self.size = size
            self.sha256 = sha256
            self.done = done
        }

        init?(text: String) {
            var fields: [String: String] = [:]
            for line in text.split(separator: "\n") {
                guard let space = line.firstIndex(of: " ") else { continue }
                fields[String(line[..<space])] = String(line[line.index(after: space)...])
            }
            guard fields["p2p-partial"] == "1", let name = fields["name"], let sizeText = fields["size"],
                let size = Int64(sizeText), let sha256 = fields["sha256"]
            else { return nil }
            owners = (fields["owners"] ?? "").split(separator: ",").map(String.init)
            remoteName = name
            self.size = size
            self.sha256 = sha256
            done = Set((fields["done"] ?? "").split(separator: ",").compactMap { Int($0) })
        }
    }

    var chunkCount: Int { Int((info.size + Self.chunkSize - 1) / Self.chunkSize) }

    func range(of chunk: Int) -> (offset: Int64, length: Int64) {
        let offset = Int64(chunk) * Self.chunkSize
        return (offset, min(Self.chunkSize, info.size - offset))
    }

    /// Runs the download; returns the size.
    func run() async throws(DownloadError) -> Int64 {
        try checkSize()
        var done = prepare()
        var resumed: Int32?
        if !done.isEmpty {
            resumed = resumePartial()
            if resumed == nil {
                notice(
                    """
                    \(partialPath) is not the partial file of the interrupted download (a link, or another file): \
                    starting over
                    """
                )
                done = []
                unlink(partialPath)
                unlink(recordPath)
            }
        }
        let descriptor: Int32
        if let resumed { descriptor = resumed } else { descriptor = try createPartial() }
        defer { close(descriptor) }
        guard ftruncate(descriptor, off_t(info.size)) == 0 else {
            throw .localFile("\(partialPath): \(String(cString: strerror(errno)))")
        }
        let plan = ChunkPlan(
            count: chunkCount, done: done,
            record: Record(
                owners: sources.map(\.owner), remoteName: remoteName, size: info.size, sha256: info.sha256, done: done),
            recordPath: recordPath)
        await plan.save()
        let (completed, completions) = AsyncStream.makeStream(of: Int.self)
        for chunk in done.sorted() { completions.yield(chunk) }
        let counter = ByteCounter(done.reduce(0) { $0 + range(of: $1).length })
        let cursor = HashCursor()
        let hashing = Task { await hashInOrder(descriptor: descriptor, cursor: cursor, completed: completed) }

        let failures = await withTaskGroup(of: String?.self) { group in
            for source in sources {
                group.addTask {
                    // A run of consecutive chunks on one connection: the whole file from a
                    // single source, shorter runs the more sources share it.
                    while let run = await plan.nextRun(sources: sources.count) {
                        let offset = range(of: run.chunks[0]).offset
                        let last = range(of: run.chunks[run.chunks.count - 1])
                        let marked = ByteCounter(0)
                        let partly = ByteCounter(0)
                        do {
                            try await fetch(
                                offset: offset, length: last.offset + last.length - offset, from: source,
                                into: descriptor, cursor: cursor,
                                received: { bytes in
                                    partly.add(bytes)
                                    progress?(counter.add(bytes), info.size)
                                },
                                written: { position in
                                    // Every chunk wholly on disk now counts as arrived.
                                    while marked.value < Int64(run.chunks.count) {
                                        let chunk = run.chunks[Int(marked.value)]
                                        let (start, length) = range(of: chunk)
                                        guard start + length <= position else { break }
                                        marked.add(1)
                                        completions.yield(chunk)
                                        guard await plan.finished(chunk, run: run.id) else {
                                            // The rest of this run went to a faster source.
                                            if marked.value < Int64(run.chunks.count) { throw RunHandedOver() }
                                            break
                                        }
                                    }
                                })
                            await plan.release(run.id)
                        } catch {
                            // What was not finished goes back to the others.
                            let kept = run.chunks[..<Int(marked.value)].reduce(Int64(0)) { $0 + range(of: $1).length }
                            counter.add(kept - partly.value)
                            await plan.release(run.id)
                            if error is RunHandedOver { continue }
                            // This source is done for.
                            await plan.save()
                            if sources.count > 1 { notice("\(source.owner) stopped serving \(remoteName) (\(error))") }
                            return "\(source.owner): \(error)"
                        }
                    }
                    return nil
                }
            }
            var failures: [String] = []
            for await failure in group { if let failure { failures.append(failure) } }
            return failures
        }
        completions.finish()
        await plan.save()
        let digest = await hashing.value
        let arrived = await plan.doneCount
        guard arrived == chunkCount else {
            hashing.cancel()
            let received = await plan.doneBytes(size: info.size, chunkSize: Self.chunkSize)
            throw .interrupted(
                received: received,
                reason: (failures.last ?? "no source left")
                    + "; kept \(received) of \(info.size) bytes: GET_FILE into the same name continues it")
        }
        guard let digest, digest == info.sha256 else {
            unlink(partialPath)
            unlink(recordPath)
            throw .digestMismatch(expected: info.sha256, got: digest ?? "?")
        }
        do {
            try await BlockingWork.run {
                guard fsync(descriptor) == 0, rename(partialPath, localPath) == 0 else {
                    throw DownloadError.localFile("\(localPath): \(String(cString: strerror(errno)))")
                }
                unlink(recordPath)
            }
        } catch let error as DownloadError {
            throw error
        } catch {
            throw .localFile("\(error)")
        }
        return info.size
    }

    /// The size the owners announce, against `maxSize` and the free space of the destination's
    /// file system (what a partial file of an earlier attempt holds already counts as free):
    /// an owner cannot make this client reserve more than it can hold.
    private func checkSize() throws(DownloadError) {
        if let maxSize, info.size > maxSize {
            throw .tooLarge(
                size: info.size, reason: "over the \(maxSize) bytes this client accepts (--max-download-size)")
        }
        let folder = URL(fileURLWithPath: localPath).deletingLastPathComponent().path
        var space = statvfs()
        guard statvfs(folder, &space) == 0 else { return }
        let free = Int64(
            clamping: UInt64(space.f_bavail).multipliedReportingOverflow(by: UInt64(space.f_frsize)).partialValue)
        var partial = stat()
        let already =
            lstat(partialPath, &partial) == 0 && (partial.st_mode & S_IFMT) == S_IFREG
            ? Int64(partial.st_blocks) * 512 : 0
        if info.size > free + already {
            throw .tooLarge(size: info.size, reason: "more than the \(free) bytes free in \(folder)")
        }
    }

    /// The hidden partial file of an earlier attempt, opened safely in a folder others may
    /// write to: never through a symbolic link, never another file's hard link, only a regular
    /// file of this user's of the announced size; nil otherwise.
    private func resumePartial() -> Int32? {
        let descriptor = open(partialPath, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        var status = stat()
        guard fstat(descriptor, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG, status.st_nlink == 1,
            status.st_uid == getuid(), Int64(status.st_size) == info.size
        else {
            close(descriptor)
            return nil
        }
        return descriptor
    }

    /// A new partial file. O_EXCL and O_NOFOLLOW: whatever stands at the name (planted after
    /// `prepare` removed it) is an error, never opened or truncated.
    private func createPartial() throws(DownloadError) -> Int32 {
        let descriptor = open(partialPath, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw .localFile("\(partialPath): \(String(cString: strerror(errno)))") }
        return descriptor
    }

    /// The chunks a partial file from an earlier attempt already holds, when it is the same
    /// file (size and digest); else it starts over, said on stderr.
    private func prepare() -> Set<Int> {
        guard let text = try? String(contentsOfFile: recordPath, encoding: .utf8) else {
            unlink(partialPath)
            return []
        }
        guard let record = Record(text: text), record.size == info.size, record.sha256 == info.sha256,
            FileManager.default.fileExists(atPath: partialPath)
        else {
            notice("\(remoteName) changed at the peer since the interrupted download: starting over")
            unlink(partialPath)
            unlink(recordPath)
            return []
        }
        let done = record.done.filter { $0 >= 0 && $0 < chunkCount }
        if !done.isEmpty {
            let bytes = done.reduce(Int64(0)) { $0 + range(of: $1).length }
            notice("continuing \(remoteName): \(bytes) of \(info.size) bytes are already here")
        }
        return done
    }

    /// SHA-256 of the file, in order. Bytes that arrive in order are hashed as they are written
    /// (``HashCursor``, fed by the transfers); whatever arrived otherwise (from another source,
    /// or in an earlier attempt) is read back from the partial file once the chunks before it
    /// are there, on the thread pool, while later chunks still arrive. Nil when not every chunk
    /// came.
    private func hashInOrder(descriptor: Int32, cursor: HashCursor, completed: AsyncStream<Int>) async -> String? {
        var ready = Set<Int>()
        var next = 0
        for await chunk in completed {
            ready.insert(chunk)
            while ready.contains(next) {
                let (offset, length) = range(of: next)
                await cursor.drain()
                if cursor.upTo < offset + length {
                    let path = partialPath
                    let readBack: Void? = try? await BlockingWork.run {
                        var buffer = [UInt8](repeating: 0, count: 1 << 20)
                        var position = max(offset, cursor.upTo)
                        while position < offset + length {
                            let want = Int(min(Int64(buffer.count), offset + length - position))
                            let count = buffer.withUnsafeMutableBytes {
                                pread(descriptor, $0.baseAddress!, want, off_t(position))
                            }
                            if count < 0 && errno == EINTR { continue }
                            guard count > 0 else { throw DownloadError.localFile("cannot read back \(path)") }
                            buffer.withUnsafeBytes {
                                cursor.offer(UnsafeRawBufferPointer(rebasing: $0[0..<count]), at: position)
                            }
                            position += Int64(count)
                        }
                    }
                    guard readBack != nil else { return nil }
                }
                ready.remove(next)
                next += 1
            }
        }
        return cursor.upTo == info.size ? cursor.digest() : nil
    }

    /// Fetches `length` bytes from `offset` of the file from `source`, written in place.
    private func fetch(
        offset: Int64, length: Int64, from source: PeerSource, into descriptor: Int32, cursor: HashCursor,
        received: @escaping @Sendable (Int64) -> Void, written: @escaping @Sendable (Int64) async throws -> Void
    ) async throws {
        guard let name = PeerRequest.range(offset: offset, length: length, name: remoteName).fileName else {
            throw DownloadError.invalidReply("the name is too long for a range request")
        }
        var request = ByteBuffer()
        try FileRequest(fileName: name).encode(into: &request)
        let bytes = request
        try await PeerConnection.withLink(to: source, idleTimeout: idleTimeout) { link in
            try await link.write(bytes)
            // Our peer answers a range `0·` and exactly `length` bytes: the length decides, no
            // framing rule is needed, and the bytes go to disk and to the hash as they came,
            // without being copied into one buffer first.
            var codeDecoder = ResultCodeDecoder()
            var parts: [ByteBuffer] = []
            var gathered = 0
            var position = offset
            var remaining = length
            // The write of the last MiB gathered, running while the next one arrives; what it
            // ends at. At most one at a time, and always finished before this returns or
            // throws: the descriptor is the caller's to close.
            var pendingWrite: Task<Int64, any Error>?
            func settle() async throws {
                guard let task = pendingWrite else { return }
                pendingWrite = nil
                try await written(try await task.value)
            }
            func flush() async throws {
                guard gathered > 0 else { return }
                try await settle()
                let data = parts
                let at = position
                let end = at + Int64(gathered)
                pendingWrite = Task {
                    try await BlockingWork.run {
                        var place = at
                        for part in data {
                            try part.withUnsafeReadableBytes { raw in
                                var written = 0
                                while written < raw.count {
                                    let count = pwrite(
                                        descriptor, raw.baseAddress! + written, raw.count - written,
                                        off_t(place) + off_t(written))
                                    if count < 0 {
                                        if errno == EINTR { continue }
                                        throw DownloadError.localFile(String(cString: strerror(errno)))
                                    }
                                    written += count
                                }
                            }
                            place += Int64(part.readableBytes)
                        }
                    }
                    return end
                }
                // In order, it is hashed on the side now and never read back.
                var place = at
                for part in data {
                    cursor.feed(part, at: place)
                    place += Int64(part.readableBytes)
                }
                if cursor.backlog > 32 << 20 { await cursor.drain() }
                position = end
                received(Int64(gathered))
                parts.removeAll(keepingCapacity: true)
                gathered = 0
            }
            var settled = false
            do {
                while var chunk = try await link.next() {
                    if !settled {
                        guard let code = try codeDecoder.decode(&chunk) else { continue }
                        if code == FileReplyCode.noSuchFile { throw DownloadError.noSuchFile }
                        if code != .ok { throw DownloadError.refused(code) }
                        // A NUL right after a digit code belongs to the code, even in a later read.
                        guard codeDecoder.skipTerminator(&chunk) else { continue }
                        settled = true
                    }
                    let take = min(chunk.readableBytes, Int(remaining))
                    if take > 0 {
                        parts.append(chunk.readSlice(length: take)!)
                        gathered += take
                        remaining -= Int64(take)
                    }
                    if gathered >= 1 << 20 || remaining == 0 { try await flush() }
                    if remaining == 0 { break }
                }
                try await flush()
                try await settle()
            } catch {
                _ = try? await pendingWrite?.value
                throw error
            }
            guard settled || length == 0, remaining == 0 else {
                throw DownloadError.interrupted(
                    received: position - offset, reason: "the peer sent \(position - offset) of \(length) bytes")
            }
        }
    }
}

/// The SHA-256 of a file's first `upTo` bytes, fed from wherever they come, in order: bytes
/// offered out of order are ignored (they are read back later), bytes offered twice count once.
final class HashCursor: Sendable {
    private let state = Mutex<(hasher: SHA256, upTo: Int64)>((SHA256(), 0))
    /// Hashes what the transfers feed, in the order fed, off their path.
    private let queue = DispatchQueue(label: "p2p-download-hash")
    private let queued = Atomic<Int>(0)

    /// Bytes fed and not hashed yet.
    var backlog: Int { queued.load(ordering: .relaxed) }

    /// Hands `buffer` (the file's bytes from `offset`) to the hashing thread without waiting.
    func feed(_ buffer: ByteBuffer, at offset: Int64) {
        let count = buffer.readableBytes
        queued.wrappingAdd(count, ordering: .relaxed)
        queue.async {
            buffer.withUnsafeReadableBytes { self.offer($0, at: offset) }
            self.queued.wrappingSubtract(count, ordering: .relaxed)
        }
    }

    /// Returns once everything fed so far is hashed.
    func drain() async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in queue.async { done.resume() } }
    }

    var upTo: Int64 { state.withLock { $0.upTo } }

    func offer(_ bytes: UnsafeRawBufferPointer, at offset: Int64) {
        state.withLock { state in
            let end = offset + Int64(bytes.count)
            guard offset <= state.upTo, end > state.upTo else { return }
            let skip = Int(state.upTo - offset)
            state.hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: bytes[skip...]))
            state.upTo = end
        }
    }

    func digest() -> String { FileDigests.hex(state.withLock { $0.hasher }.finalize()) }
}

/// A run's tail went to another source: its fetch stops early (not a failure of the source).
struct RunHandedOver: Error {}

/// A byte count shared by concurrent transfers.
final class ByteCounter: Sendable {
    private let count: Atomic<Int64>

    init(_ initial: Int64) { count = Atomic(initial) }

    /// Adds `bytes` (negative to take back); returns the new count.
    @discardableResult
    func add(_ bytes: Int64) -> Int64 { count.wrappingAdd(bytes, ordering: .relaxed).newValue }

    var value: Int64 { count.load(ordering: .relaxed) }
}

/// Which chunks are left, taken, and done; the record beside the partial file follows it.
actor ChunkPlan {
    private var pending: [Int]
    private var done: Set<Int>
    private var record: RangedDownload.Record
    private let recordPath: String

    init(count: Int, done: Set<Int>, record: RangedDownload.Record, recordPath: String) {
        pending = (0..<count).filter { !done.contains($0) }.reversed()
        self.done = done
        self.record = record
        self.recordPath = recordPath
    }

    /// Consecutive chunks one source fetches on one connection.
    struct Run: Sendable {
        let id: Int
        let chunks: [Int]
    }

    /// Runs being fetched: their chunks, how many arrived, and how many they keep (fewer once
    /// their tail was handed to another source).
    private var running: [Int: (chunks: [Int], arrived: Int, keeps: Int)] = [:]
    private var nextID = 0

    /// The lowest chunks nobody has taken, consecutive: all that are left for a single
    /// source; for several, a share small enough that the last ones end close together. When
    /// none is left, the unstarted half of the run with most chunks still to start (a slow
    /// source's): the faster source takes it over. Nil when there is nothing to take.
    func nextRun(sources: Int) -> Run? {
        guard let first = pending.popLast() else { return takeOver() }
        var chunks = [first]
        let limit = sources == 1 ? Int.max : max(1, (pending.count + 1) / (2 * sources))
        while chunks.count < limit, let next = pending.last, next == chunks[chunks.count - 1] + 1 {
            chunks.append(pending.removeLast())
        }
        return start(chunks)
    }

    private func start(_ chunks: [Int]) -> Run {
        let id = nextID
        nextID += 1
        running[id] = (chunks, 0, chunks.count)
        return Run(id: id, chunks: chunks)
    }

    private func takeOver() -> Run? {
        // Not started: after the chunk a run is fetching now.
        func unstarted(_ run: (chunks: [Int], arrived: Int, keeps: Int)) -> Int { max(0, run.keeps - run.arrived - 1) }
        guard let (id, run) = running.max(by: { unstarted($0.value) < unstarted($1.value) }), unstarted(run) > 0
        else { return nil }
        let taken = (unstarted(run) + 1) / 2
        running[id]?.keeps = run.keeps - taken
        return start(Array(run.chunks[(run.keeps - taken)..<run.keeps]))
    }

    /// Ends a run: what it kept and did not finish goes back to the list.
    func release(_ id: Int) {
        guard let run = running.removeValue(forKey: id) else { return }
        putBack(Array(run.chunks[run.arrived..<run.keeps]))
    }

    func putBack(_ chunks: [Int]) {
        pending.append(contentsOf: chunks)
        pending.sort(by: >)
    }

    /// Records an arrived chunk of run `id`; returns whether the run goes on (false once it has
    /// every chunk it keeps). The record on disk follows at most every 100 ms (and at the end):
    /// what it misses is only fetched again.
    func finished(_ chunk: Int, run id: Int) async -> Bool {
        done.insert(chunk)
        record.done = done
        var goesOn = false
        if let run = running[id] {
            running[id]?.arrived = run.arrived + 1
            goesOn = run.arrived + 1 < run.keeps
        }
        if ContinuousClock.now - lastSaved > .milliseconds(100) { await save() }
        return goesOn
    }

    private var lastSaved = ContinuousClock.now

    var doneCount: Int { done.count }

    func doneBytes(size: Int64, chunkSize: Int64) -> Int64 {
        done.reduce(0) { $0 + min(chunkSize, size - Int64($1) * chunkSize) }
    }

    /// Writes the record (small; replaced whole).
    func save() async {
        lastSaved = .now
        let text = record.text
        let path = recordPath
        _ = try? await BlockingWork.run {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        }
    }
}
