import NIOCore
import NIOPosix
import P2PNetworkSupport

/// The implementation's address, as the command line gives it: `HOST:PORT` (`[::1]:4242`).
public struct Endpoint: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`; nil when it is not that.
    public init?(parsing text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else { return nil }
        let host = DualStack.unbracketed(String(text[..<colon]))
        guard !host.isEmpty else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { DualStack.hostAndPort(host, port) }
}

/// One TCP connection's whole exchange, as a third-party client makes it: connect, send,
/// read until the other side closes (or `timeout`), close.
enum Wire {
    struct Result {
        var received: [UInt8]
        /// The address this side connected from, as the implementation sees it (when the
        /// connection is direct).
        var localIP: String?
        /// "closed", "timed out after 5 s", "reset", ...
        var ending: String
    }

    static func exchange(
        _ bytes: [UInt8], with endpoint: Endpoint, chunkSize: Int? = nil, pauseBetweenChunks: Duration = .zero,
        holdOpen: Duration = .zero, timeout: Duration = .seconds(5), context: CheckContext? = nil
    ) async throws -> Result {
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(5))
                .channelOption(.allowRemoteHalfClosure, value: true)
                .connect(host: endpoint.host, port: endpoint.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            context?.record(
                Exchange(sent: bytes, received: [], ending: "could not connect: \(shortDescription(of: error))"))
            throw CheckFailed("cannot connect to \(endpoint): \(shortDescription(of: error))")
        }
        let localIP = channel.channel.localAddress?.ipAddress
        let result: Result = try await channel.executeThenClose { inbound, outbound in
            try await withThrowingTaskGroup(of: Result?.self) { group in
                group.addTask {
                    var received: [UInt8] = []
                    do {
                        let step = max(1, chunkSize ?? bytes.count)
                        var offset = 0
                        while offset < bytes.count {
                            let end = min(bytes.count, offset + step)
                            try await outbound.write(ByteBuffer(bytes: bytes[offset..<end]))
                            offset = end
                            if pauseBetweenChunks > .zero, bytes.count > offset {
                                try await Task.sleep(for: pauseBetweenChunks)
                            }
                        }
                        if holdOpen > .zero { try await Task.sleep(for: holdOpen) }
                        for try await chunk in inbound {
                            received += chunk.readableBytesView
                        }
                        return Result(received: received, localIP: localIP, ending: "closed by the other side")
                    } catch is CancellationError {
                        return nil
                    } catch {
                        return Result(received: received, localIP: localIP, ending: shortDescription(of: error))
                    }
                }
                group.addTask {
                    try? await Task.sleep(for: timeout)
                    return nil
                }
                let first = try await group.next()!
                group.cancelAll()
                return first
                    ?? Result(received: [], localIP: localIP, ending: "no end of reply within \(timeout)")
            }
        }
        context?.record(Exchange(sent: bytes, received: result.received, ending: result.ending))
        return result
    }
}
