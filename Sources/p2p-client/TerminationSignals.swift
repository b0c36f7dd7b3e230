import Foundation
import P2PNetworkSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Where the signal handler writes; set once, before any handler is installed.
private nonisolated(unsafe) var signalPipeWriteEnd: Int32 = -1

/// Ctrl+C, SIGTERM and SIGHUP (which end the client) and SIGCONT (after Ctrl+Z and `fg`: the
/// prompt is redrawn), delivered as calls on an ordinary thread.
///
/// The handler only writes the signal's number to a pipe (all a handler may safely do); a
/// thread reads it and runs `body`. A plain sigaction handler rather than a Dispatch source:
/// libedit installs its own handlers while it reads a line and passes each signal on to the
/// handler it found, which must therefore be a real one.
enum TerminationSignals {
    static let numbers: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGCONT]

    static func install(_ body: @escaping @Sendable (Int32) -> Void) {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { return }
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        signalPipeWriteEnd = ends[1]
        let readEnd = ends[0]
        for number in numbers {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                var byte = UInt8(truncatingIfNeeded: number)
                _ = write(signalPipeWriteEnd, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(number, &action, nil)
        }
        WorkerThread.start(named: "p2p-signals") { byteLoop(readEnd, body) }
    }

    private static func byteLoop(_ descriptor: Int32, _ body: @Sendable (Int32) -> Void) {
        var byte: UInt8 = 0
        while true {
            let count = read(descriptor, &byte, 1)
            if count < 0 && errno == EINTR { continue }
            guard count == 1 else { return }
            body(Int32(byte))
        }
    }
}
