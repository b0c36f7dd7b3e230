import NIOCore
import NIOPosix
import P2PProtocol

/// Talks to a server with raw bytes, as a third-party client would.
public enum RawConnection {
    /// Connects, sends `bytes` (optionally in chunks of `chunkSize`), half-closes if asked, and
    /// returns everything the server sent until it closed. `source` binds the local end (to
    /// talk from another loopback address such as 127.0.0.2).
    public static func exchange(
        _ bytes: [UInt8],
        with address: SocketAddress,
        from source: SocketAddress? = nil,
        chunkSize: Int? = nil,
        halfClose: Bool = false
    ) async throws -> [UInt8] {
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        if let source { bootstrap = bootstrap.bind(to: source) }
        let channel = try await bootstrap
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(to: address) { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Outbound half-closure on, so that finishing the writer sends FIN.
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true))
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            let step = max(1, chunkSize ?? bytes.count)
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + step)
                try await outbound.write(ByteBuffer(bytes: bytes[offset..<end]))
                offset = end
            }
            if halfClose { outbound.finish() }
            var received: [UInt8] = []
            for try await chunk in inbound {
                received += chunk.readableBytesView
            }
            return received
        }
    }

    /// The bytes of `fields`, each followed by NUL.
    public static func fields(_ fields: String...) -> [UInt8] {
        fields.flatMap { Array($0.utf8) + [0] }
    }

    /// Sends a request and decodes the reply.
    public static func send(_ request: Request, to address: SocketAddress, from source: SocketAddress? = nil)
        async throws -> Reply
    {
        var buffer = ByteBuffer()
        try RequestEncoder.encode(request, into: &buffer)
        var received = ByteBuffer(
            bytes: try await exchange(Array(buffer.readableBytesView), with: address, from: source))
        var decoder = ReplyDecoder(operation: request.operation)
        guard let reply = try decoder.decode(&received) else { throw decoder.finish() }
        return reply
    }
}
