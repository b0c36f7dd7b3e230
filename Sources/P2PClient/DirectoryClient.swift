import NIOCore
import NIOPosix
import P2PNetworkSupport
import P2PProtocol

/// Why a request to the directory server got no reply.
public enum DirectoryClientError: Error, Equatable, CustomStringConvertible {
    /// The request cannot be sent as is (a field over 255 bytes, say).
    case invalidRequest(ProtocolError)
    case unreachable(String)
    /// The connection was made, then closed or reset before a complete reply.
    case connectionLost(String)
    case timedOut
    /// The server's bytes are not a valid reply.
    case invalidReply(ProtocolError)

    public var description: String {
        switch self {
        case .invalidRequest(let error): return "request not sent: \(error)"
        case .unreachable(let reason): return "directory server unreachable: \(reason)"
        case .connectionLost(let reason): return "the directory server ended the connection without a reply: \(reason)"
        case .timedOut: return "directory server did not answer in time"
        case .invalidReply(let error): return "invalid reply from the directory server: \(error)"
        }
    }
}

/// Sends requests to the directory server: one TCP connection per request (PROTOCOL.md
/// section 1). Accepts every result-code encoding of section 3.
public struct DirectoryClient: Sendable {
    public let host: String
    public let port: Int
    public let timeout: Duration

    /// `host`: a name, an IPv4 address or an IPv6 one (brackets allowed: `[::1]`).
    public init(host: String, port: Int, timeout: Duration = .seconds(5)) {
        self.host = DualStack.unbracketed(host)
        self.port = port
        self.timeout = timeout
    }

    public func send(_ request: Request) async throws(DirectoryClientError) -> Reply {
        var buffer = ByteBuffer()
        do {
            try RequestEncoder.encode(request, into: &buffer)
        } catch {
            throw .invalidRequest(error)
        }
        let bytes = buffer
        do {
            return try await withTimeout(timeout, error: DirectoryClientError.timedOut) {
                try await exchange(bytes, operation: request.operation)
            }
        } catch let error as DirectoryClientError {
            throw error
        } catch let error as ProtocolError {
            throw .invalidReply(error)
        } catch let error as ConnectionLost {
            throw .connectionLost(shortDescription(of: error.underlying))
        } catch {
            throw .unreachable("\(host):\(port): \(shortDescription(of: error))")
        }
    }

    /// An I/O error after the connection was made.
    private struct ConnectionLost: Error {
        var underlying: any Error
    }

    /// Opens a connection to the server and closes it without sending anything; throws
    /// `.unreachable` when none can be opened.
    public func probe() async throws(DirectoryClientError) {
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(3))
                .connect(host: host, port: port).get()
            try await channel.close()
        } catch {
            throw .unreachable("\(host):\(port): \(shortDescription(of: error))")
        }
    }

    private func exchange(_ bytes: ByteBuffer, operation: DirectoryOperation) async throws -> Reply {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(3))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            // The reply is complete once decoded: no waiting for a NUL or a close that may not come.
            var decoder = ReplyDecoder(operation: operation)
            do {
                try await outbound.write(bytes)
                for try await var chunk in inbound {
                    if let reply = try decoder.decode(&chunk) { return reply }
                }
            } catch let error as ProtocolError {
                throw error
            } catch {
                throw ConnectionLost(underlying: error)
            }
            throw decoder.finish()
        }
    }
}
