import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A stand-in for the third-party Python peers of this protocol, as badly behaved as they
/// are: one thread accepts connections one after another; for each it reads the operation and
/// then the file name one byte at a time until a NUL; answers `0` NUL and the file's bytes, or
/// `1` NUL when it has no such file, and closes.
///
/// Their two flaws, reproduced:
/// - A connection that ends before the NUL makes their `recv` return nothing for ever, and the
///   loop spins at 100% of a core and never accepts again. Here the reads that returned
///   nothing are counted in ``spins``, and the accept loop ends (after a bounded spin, so the
///   test machine does not burn a core).
/// - One of them ends its serving thread when a reply cannot be sent: so does this one
///   (``sendFailures``).
public final class FragilePeer: Sendable {
    public let port: Int
    private let core: Core

    public struct State: Sendable {
        /// The file names asked for, in order.
        public var requests: [String] = []
        /// Reads that returned nothing while a request was incomplete.
        public var spins = 0
        /// Replies that could not be sent.
        public var sendFailures = 0
        /// Whether the accept loop has ended (what a spin or a failed send does to the real ones).
        public var stoppedServing = false
    }

    /// A peer on 127.0.0.1 serving `files` (name -> content).
    public init(files: [String: [UInt8]] = [:]) throws {
        let (listener, port) = try loopbackSocket(listening: 64)
        self.port = port
        core = Core(listener: listener, files: files)
        let thread = Thread { [core] in core.acceptLoop() }
        thread.name = "fragile-peer"
        thread.start()
    }

    /// What it has seen so far.
    public var seen: State { core.state.withLock { $0 } }

    /// Stops accepting (the peer's program exits): connections are refused from now on.
    public func stop() { core.stop() }

    deinit { core.stop() }
}

/// The serving thread's side, kept apart so that dropping the ``FragilePeer`` stops it.
private final class Core: Sendable {
    let listener: Int32
    let files: [String: [UInt8]]
    let state = Mutex(FragilePeer.State())
    private let finished = Atomic<Bool>(false)
    /// Whether the thread has closed the listening socket (its number may belong to another
    /// socket from then on).
    private let closed = Mutex(false)

    init(listener: Int32, files: [String: [UInt8]]) {
        self.listener = listener
        self.files = files
    }

    func stop() {
        guard !finished.exchange(true, ordering: .relaxed) else { return }
        // Wakes the thread's accept; the thread closes the socket.
        closed.withLock { closed in
            if !closed { shutdown(listener, Int32(SHUT_RDWR)) }
        }
    }

    func acceptLoop() {
        defer {
            closed.withLock { closed in
                close(listener)
                closed = true
            }
            state.withLock { $0.stoppedServing = true }
        }
        while !finished.load(ordering: .relaxed) {
            let connection = accept(listener, nil, nil)
            if connection < 0 {
                if errno == EINTR { continue }
                return
            }
            let keepServing = serve(connection)
            close(connection)
            if !keepServing { return }
        }
    }

    /// One connection; false when the real peer would never accept again.
    private func serve(_ connection: Int32) -> Bool {
        guard let operation = readString(connection), let name = readString(connection) else { return false }
        guard operation == "GET_FILE" else { return true }
        state.withLock { $0.requests.append(name) }
        var reply: [UInt8]
        if let content = files[name] {
            reply = Array("0".utf8) + [0] + content
        } else {
            reply = Array("1".utf8) + [0]
        }
        var offset = 0
        while offset < reply.count {
            let sent = reply.withUnsafeBytes {
                send(connection, $0.baseAddress! + offset, reply.count - offset, Int32(MSG_NOSIGNAL))
            }
            if sent <= 0 {
                state.withLock { $0.sendFailures += 1 }
                return false
            }
            offset += sent
        }
        return true
    }

    /// Reads bytes one at a time until a NUL. Nil when the connection ended first: the real
    /// peer would spin here for ever.
    private func readString(_ connection: Int32) -> String? {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        var emptyReads = 0
        while true {
            let count = recv(connection, &byte, 1, 0)
            if count == 1 {
                if byte == 0 { return String(decoding: bytes, as: UTF8.self) }
                bytes.append(byte)
                continue
            }
            if count < 0 && errno == EINTR { continue }
            emptyReads += 1
            state.withLock { $0.spins += 1 }
            if emptyReads >= 1000 { return nil }
        }
    }
}

/// Connects to 127.0.0.1:`port`, sends `bytes` (when empty: ends its side of the connection
/// without a byte), and reads until the other side closes: all it sent. Blocking; for tests of
/// raw peers.
public func exchangeBytes(port: Int, sending bytes: [UInt8]) throws -> [UInt8] {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw SetupError("socket failed") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { throw SetupError("connect to \(port) failed: errno \(errno)") }
    if bytes.isEmpty {
        shutdown(descriptor, Int32(SHUT_WR))
    } else {
        let sent = bytes.withUnsafeBytes { send(descriptor, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == bytes.count else { throw SetupError("send failed") }
    }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var received: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = recv(descriptor, &chunk, chunk.count, 0)
        if count == 0 { return received }
        guard count > 0 else { throw SetupError("recv failed: errno \(errno)") }
        received += chunk[0..<count]
    }
}
