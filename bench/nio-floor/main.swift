// The NIO floor for `make bench`: the least a SwiftNIO server of the directory protocol's shape
// can do. One channel handler reads a request until it has the request's NUL-terminated fields
// (the count is taken from the operation name, as bench/floor_server.c does), answers "0" NUL and
// closes. No store, no log, no decoding beyond counting NULs: what our server costs beyond this
// is ours, what this costs beyond the C floor is the framework's.
//
// usage: nio-floor PORT   (prints "listening <port>" once ready; PORT 0 picks a free one)
import NIOCore
import NIOPosix

final class FloorHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var fields = 0
    private var expected = 0
    private var name: [UInt8] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        for byte in bytes.readableBytesView {
            if expected == 0 && byte != 0 && name.count < 15 { name.append(byte) }
            guard byte == 0 else { continue }
            fields += 1
            if expected == 0 { expected = Self.fields(for: String(decoding: name, as: UTF8.self)) }
            if fields >= expected {
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: [0x30, 0]))).whenComplete { _ in
                    channel.close(promise: nil)
                }
                return
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    static func fields(for name: String) -> Int {
        switch name {
        case "CONNECT", "DELETE", "LIST_CONTENT": return 4
        case "PUBLISH": return 5
        default: return 3
        }
    }
}

let port = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 0 : 0
// One event loop per core, as the directory server runs.
let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
let channel = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 4096)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(FloorHandler()) }
    }
    .bind(host: "127.0.0.1", port: port).wait()
print("listening \(channel.localAddress?.port ?? 0)")
try channel.closeFuture.wait()
