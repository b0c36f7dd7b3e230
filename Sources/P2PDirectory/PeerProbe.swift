import Foundation
import P2PNetworkSupport
import P2PProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// Checks that each of many peers is alive with a complete GET_FILE exchange for a reserved
/// name that no file has (``ReservedFileName/peerCheck``), on a thread of its own with plain
/// non-blocking sockets and `poll`: a check costs a handful of system calls, not a NIO channel
/// and a task. Used by ``PeerChecker``.
///
/// Why a request and not a bare connection: the third-party Python peers read the operation
/// one byte at a time until a NUL and spin for ever on a connection that ends first, and one
/// of them stops accepting when a reply cannot be sent. So a check sends a request those peers
/// answer correctly (code 1, no such file), reads the reply to its end, and only then closes:
/// the peer's `send` never meets a closed connection, and nothing unread makes our close a reset.
enum PeerProbe {
    struct Target: Sendable {
        var ip: String
        var port: String
    }

    /// The bytes of the check: `"GET_FILE"` `"/.p2p-reserved/peer-check"`.
    static let request: [UInt8] = {
        var bytes = Array(FileRequest.operationName.utf8)
        bytes.append(0)
        bytes.append(contentsOf: ReservedFileName.peerCheck.utf8)
        bytes.append(0)
        return bytes
    }()

    /// Whether each target answered the check with a result code within `timeout`. At most
    /// `concurrency` checks are open at once, and check `i` does not start before
    /// `start + slice * (i / perSlice)`, which spreads a round over time. Stops early (the
    /// rest counted as answering) when `shouldStop` says so.
    static func run(
        _ targets: [Target], timeout: Duration, concurrency: Int, slice: Duration, perSlice: Int,
        shouldStop: @escaping @Sendable () -> Bool
    ) async -> [Bool] {
        await WorkerThread.run(named: "p2p-peer-check") {
            probe(
                targets, timeout: timeout, concurrency: concurrency, slice: slice, perSlice: perSlice,
                shouldStop: shouldStop)
        }
    }

    /// One check in flight.
    struct Exchange {
        enum Phase: Equatable {
            /// `connect` has not completed yet.
            case connecting
            /// Connected; `sent` bytes of the request are out.
            case sending(sent: Int)
            /// The request is out; waiting for the code.
            case awaitingCode
            /// A well-formed code arrived: the peer is alive. Reading to the end of its reply.
            case draining
        }

        var descriptor: Int32
        var index: Int
        var deadline: ContinuousClock.Instant
        var phase = Phase.connecting

        var events: Int16 {
            switch phase {
            case .connecting, .sending: Int16(POLLOUT)
            case .awaitingCode, .draining: Int16(POLLIN)
            }
        }
    }

    /// What became of a check after an event.
    enum Step: Equatable {
        case pending
        case alive
        case failed
    }

    private static func probe(
        _ targets: [Target], timeout: Duration, concurrency: Int, slice: Duration, perSlice: Int,
        shouldStop: () -> Bool
    ) -> [Bool] {
        var answered = [Bool](repeating: true, count: targets.count)
        var open: [Exchange] = []
        var next = 0
        let start = ContinuousClock.now
        while next < targets.count || !open.isEmpty {
            if shouldStop() {
                for exchange in open { close(exchange.descriptor) }
                return answered
            }
            let now = ContinuousClock.now
            while next < targets.count && open.count < concurrency && now >= start + slice * (next / perSlice) {
                if let (descriptor, connected) = connectWithoutWaiting(targets[next]) {
                    var exchange = Exchange(descriptor: descriptor, index: next, deadline: now + timeout)
                    if connected { exchange.phase = .sending(sent: 0) }
                    open.append(exchange)
                } else {
                    answered[next] = false
                }
                next += 1
            }
            if open.isEmpty {
                if next < targets.count {
                    let wake = start + slice * (next / perSlice)
                    if wake > now { Thread.sleep(forTimeInterval: seconds(wake - now)) }
                }
                continue
            }
            var descriptors = open.map { pollfd(fd: $0.descriptor, events: $0.events, revents: 0) }
            let ready = poll(&descriptors, nfds_t(descriptors.count), 10)
            let after = ContinuousClock.now
            var still: [Exchange] = []
            for (var exchange, entry) in zip(open, descriptors) {
                var step = Step.pending
                if ready > 0 && entry.revents != 0 {
                    step = advance(&exchange)
                }
                if step == .pending && after >= exchange.deadline {
                    // No reply in time. A peer that already gave its code is alive, just slow
                    // to close; what it had sent is read first, so our close is not a reset.
                    step = exchange.phase == .draining ? .alive : .failed
                    if step == .alive { drain(exchange.descriptor) }
                }
                switch step {
                case .pending:
                    still.append(exchange)
                case .alive, .failed:
                    answered[exchange.index] = step == .alive
                    close(exchange.descriptor)
                }
            }
            open = still
        }
        return answered
    }

    /// Moves one check along after `poll` reported its socket ready.
    private static func advance(_ exchange: inout Exchange) -> Step {
        let descriptor = exchange.descriptor
        while true {
            switch exchange.phase {
            case .connecting:
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                guard getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error == 0 else {
                    return .failed
                }
                exchange.phase = .sending(sent: 0)
            case .sending(let sent):
                let written = request.withUnsafeBytes { bytes in
                    send(descriptor, bytes.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL))
                }
                if written < 0 {
                    return errno == EAGAIN || errno == EINTR ? .pending : .failed
                }
                if sent + written < request.count {
                    exchange.phase = .sending(sent: sent + written)
                    return .pending
                }
                exchange.phase = .awaitingCode
                return .pending
            case .awaitingCode:
                var byte: UInt8 = 0
                let count = recv(descriptor, &byte, 1, 0)
                if count < 0 { return errno == EAGAIN || errno == EINTR ? .pending : .failed }
                // Closed before a reply, or something that is not a result code of this protocol.
                guard count == 1, isResultCode(byte) else { return .failed }
                exchange.phase = .draining
            case .draining:
                switch drain(descriptor) {
                case .more: return .pending
                case .ended: return .alive
                }
            }
        }
    }

    /// A result code in either encoding: a raw byte 0-9 or an ASCII digit.
    static func isResultCode(_ byte: UInt8) -> Bool {
        byte <= 9 || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    private enum Drained {
        /// The peer may still send more.
        case more
        /// The peer closed (or reset) its side.
        case ended
    }

    /// Reads and drops whatever the peer has sent so far (the code's NUL, nothing else for a
    /// reserved name).
    @discardableResult
    private static func drain(_ descriptor: Int32) -> Drained {
        var scratch = [UInt8](repeating: 0, count: 512)
        while true {
            let count = recv(descriptor, &scratch, scratch.count, 0)
            if count > 0 { continue }
            if count == 0 { return .ended }
            return errno == EAGAIN || errno == EINTR ? .more : .ended
        }
    }

    /// A non-blocking socket whose `connect` is under way (`connected` false) or already done,
    /// or nil when the attempt failed at once.
    private static func connectWithoutWaiting(_ target: Target) -> (descriptor: Int32, connected: Bool)? {
        guard let port = UInt16(target.port), port > 0 else { return nil }
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        let family: Int32
        if inet_pton(AF_INET, target.ip, &v4.sin_addr) == 1 {
            family = AF_INET
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
        } else if inet_pton(AF_INET6, target.ip, &v6.sin6_addr) == 1 {
            family = AF_INET6
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = port.bigEndian
        } else {
            return nil
        }
        let descriptor = socket(
            family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return nil }
        let result: Int32 =
            family == AF_INET
            ? withUnsafePointer(to: &v4) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            : withUnsafePointer(to: &v6) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        if result == 0 { return (descriptor, true) }
        if errno == EINPROGRESS { return (descriptor, false) }
        close(descriptor)
        return nil
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
