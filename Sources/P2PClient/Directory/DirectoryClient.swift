import NIOCore
import NIOPosix
import P2PIdentity
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
    /// The server binds the user to another key than this client's (docs/PROTOCOL.md, "Keys").
    case boundToAnotherKey(user: String, fingerprint: String)
    /// The server did not accept this client's proof of its key.
    case keyRefused(String)

    public var description: String {
        switch self {
        case .invalidRequest(let error): return "request not sent: \(error)"
        case .unreachable(let reason): return "directory server unreachable: \(reason)"
        case .connectionLost(let reason): return "the directory server ended the connection without a reply: \(reason)"
        case .timedOut: return "directory server did not answer in time"
        case .invalidReply(let error): return "invalid reply from the directory server: \(error)"
        case .boundToAnotherKey(let user, let fingerprint):
            return "the directory server binds \(user) to another key than this client's (\(fingerprint)): "
                + "only the client holding that key can change \(user); if it was lost, the server's operator "
                + "can unbind the name (p2p-server unbind)"
        case .keyRefused(let reason): return "the directory server refused this client's key: \(reason)"
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
    /// The keyed sessions, when this client has an identity.
    let keyed: KeyedDirectory?

    /// `host`: a name, an IPv4 address or an IPv6 one (brackets allowed: `[::1]`). With an
    /// `identity`, a user's changes and control connection are sent keyed to a server that
    /// announces `identity` (docs/PROTOCOL.md, "Keys"); to any other, plain.
    public init(host: String, port: Int, timeout: Duration = .seconds(5), identity: IdentityKey? = nil) {
        self.host = DualStack.unbracketed(host)
        self.port = port
        self.timeout = timeout
        keyed = identity.map { KeyedDirectory(identity: $0) }
    }

    /// The identity this client proves, if any.
    public var identity: IdentityKey? { keyed?.identity }

    /// Sends `request`, keyed when it is a change of a user and the server has keys.
    public func send(_ request: Request) async throws(DirectoryClientError) -> Reply {
        guard request.proof == nil, let first = try await keyedForm(of: request), let keyed else {
            return try await sendPlain(request)
        }
        // A session the server does not know (its ticket expired, or sealed by another
        // directory): opened again once.
        var proved = first
        for attempt in 0..<2 {
            if attempt > 0 { proved = try await self.proved(request, keyed) }
            switch try await exchange(proved, decoder: KeyedReplyDecoder(operation: request.operation)) {
            case .verified(let reply): return reply
            case .unknownSession: await keyed.forget(user: request.user, session: proved.proof!.session)
            case .refused: throw .keyRefused("the proof of \(request.operation.rawValue) did not hold")
            }
        }
        throw .keyRefused("the server forgot the session at once")
    }

    /// `request` with its proof: what a keyed request sends (the control connection uses it).
    /// nil when it goes plain.
    func keyedForm(of request: Request) async throws(DirectoryClientError) -> Request? {
        guard let keyed, request.operation.isKeyable,
            await keyed.isKeyed(request.user, via: self, dateTime: request.dateTime)
        else { return nil }
        return try await proved(request, keyed)
    }

    /// The control connection found its session unknown.
    func forgetSession(of request: Request) async {
        guard let session = request.proof?.session else { return }
        await keyed?.forget(user: request.user, session: session)
    }

    private func proved(_ request: Request, _ keyed: KeyedDirectory) async throws(DirectoryClientError) -> Request {
        do {
            return try await keyed.prove(request, via: self)
        } catch let error as DirectoryClientError {
            throw error
        } catch {
            throw .keyRefused("\(error)")
        }
    }

    /// `IDENTIFY`, on a connection of its own.
    func identify(_ request: Request) async throws(DirectoryClientError) -> IdentifyReply {
        try await exchange(request, decoder: IdentifyReplyDecoder())
    }

    /// Sends `request` as it is.
    func sendPlain(_ request: Request) async throws(DirectoryClientError) -> Reply {
        try await exchange(request, decoder: ReplyDecoder(operation: request.operation))
    }

    private func exchange<Decoder: ReplyDecoding>(
        _ request: Request, decoder: Decoder
    ) async throws(DirectoryClientError) -> Decoder.Decoded {
        var buffer = ByteBuffer()
        do {
            try RequestEncoder.encode(request, into: &buffer)
        } catch {
            throw .invalidRequest(error)
        }
        let bytes = buffer
        do {
            return try await withTimeout(timeout, error: DirectoryClientError.timedOut) {
                try await exchange(bytes, decoder: decoder)
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

    private func exchange<Decoder: ReplyDecoding>(_ bytes: ByteBuffer, decoder: Decoder) async throws -> Decoder.Decoded
    {
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
            var decoder = decoder
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

/// A decoder of one kind of reply from the directory server, fed chunks as they arrive.
protocol ReplyDecoding: Sendable {
    associatedtype Decoded: Sendable
    mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> Decoded?
    func finish() -> ProtocolError
}

extension ReplyDecoder: ReplyDecoding {}
extension KeyedReplyDecoder: ReplyDecoding {}
extension IdentifyReplyDecoder: ReplyDecoding {}
