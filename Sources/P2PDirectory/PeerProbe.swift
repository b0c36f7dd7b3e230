import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Opens a TCP connection to each of many addresses and closes it at once, without sending a
/// byte, on a thread of its own with plain non-blocking sockets and `poll`: a check costs a
/// handful of system calls, not a NIO channel and a task. Used by ``PeerChecker``.
enum PeerProbe {
    struct Target: Sendable {
        var ip: String
        var port: String
    }

    /// Whether each target accepted a connection within `timeout`. At most `concurrency`
    /// attempts are open at once, and attempt `i` does not start before
    /// `start + slice * (i / perSlice)`, which spreads a round over time. Stops early (the
    /// rest counted as answering) when `shouldStop` says so.
    static func run(
        _ targets: [Target], timeout: Duration, concurrency: Int, slice: Duration, perSlice: Int,
        shouldStop: @escaping @Sendable () -> Bool
    ) async -> [Bool] {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(
                    returning: probe(
                        targets, timeout: timeout, concurrency: concurrency, slice: slice, perSlice: perSlice,
                        shouldStop: shouldStop))
            }
            thread.name = "p2p-peer-check"
            thread.start()
        }
    }

    private struct Attempt {
        var descriptor: Int32
        var index: Int
        var deadline: ContinuousClock.Instant
    }

    private static func probe(
        _ targets: [Target], timeout: Duration, concurrency: Int, slice: Duration, perSlice: Int,
        shouldStop: () -> Bool
    ) -> [Bool] {
        var answered = [Bool](repeating: true, count: targets.count)
        var open: [Attempt] = []
        var next = 0
        let start = ContinuousClock.now
        while next < targets.count || !open.isEmpty {
            if shouldStop() {
                for attempt in open { close(attempt.descriptor) }
                return answered
            }
            let now = ContinuousClock.now
            while next < targets.count && open.count < concurrency && now >= start + slice * (next / perSlice) {
                switch connectWithoutWaiting(targets[next]) {
                case .answered: break
                case .failed: answered[next] = false
                case .pending(let descriptor):
                    open.append(Attempt(descriptor: descriptor, index: next, deadline: now + timeout))
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
            var descriptors = open.map { pollfd(fd: $0.descriptor, events: Int16(POLLOUT), revents: 0) }
            let ready = poll(&descriptors, nfds_t(descriptors.count), 10)
            let after = ContinuousClock.now
            var still: [Attempt] = []
            for (attempt, entry) in zip(open, descriptors) {
                if ready > 0 && entry.revents != 0 {
                    var error: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    let status = getsockopt(attempt.descriptor, SOL_SOCKET, SO_ERROR, &error, &length)
                    answered[attempt.index] = status == 0 && error == 0
                    close(attempt.descriptor)
                } else if after >= attempt.deadline {
                    answered[attempt.index] = false
                    close(attempt.descriptor)
                } else {
                    still.append(attempt)
                }
            }
            open = still
        }
        return answered
    }

    private enum Outcome {
        case answered
        case failed
        case pending(Int32)
    }

    private static func connectWithoutWaiting(_ target: Target) -> Outcome {
        guard let port = UInt16(target.port), port > 0 else { return .failed }
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
            return .failed
        }
        let descriptor = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return .failed }
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
        if result == 0 {
            close(descriptor)
            return .answered
        }
        if errno == EINPROGRESS { return .pending(descriptor) }
        close(descriptor)
        return .failed
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
