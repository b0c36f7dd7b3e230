import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Short, human words for the errors of a failed connection ("connection refused") instead of
/// NIO's full description, for the one-line reasons the client prints on stderr.
public func shortDescription(of error: any Error) -> String {
    if let error = error as? NIOConnectionError {
        if let first = error.connectionErrors.first { return shortDescription(of: first.error) }
        if let dnsError = error.dnsAAAAError ?? error.dnsAError { return "name not resolved (\(dnsError))" }
        return "cannot connect"
    }
    if let error = error as? IOError {
        return String(cString: strerror(error.errnoCode)).lowercased()
    }
    if error is ChannelError {
        switch error as! ChannelError {
        case .connectTimeout: return "connection timed out"
        case .ioOnClosedChannel, .alreadyClosed, .eof: return "connection closed"
        default: break
        }
    }
    return "\(error)"
}
