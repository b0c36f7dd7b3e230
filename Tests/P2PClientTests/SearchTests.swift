import Foundation
import NIOCore
import NIOPosix
import P2PTestSupport
import Testing

/// SEARCH from the client's shell: against our server, and against a server that does not
/// know it (as every third-party one).
@Suite struct SearchTests {
    @Test func searchFindsFilesOfEveryUser() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let time = try await TimeProcess()
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        try FileManager.default.createDirectory(atPath: folder.file("a"), withIntermediateDirectories: true)
        let output = try await ClientProcess.run(
            [
                "REGISTER alice", "CONNECT alice", "PUBLISH lecture-notes.pdf week one of algebra",
                "PUBLISH photo.jpg \"quoted\" <b>", "SEARCH lect ALG", "SEARCH nothing", "SEARCH -",
            ], serverPort: server.port, timeURL: time.url, directory: folder.file("a"))
        #expect(
            output == [
                "c> REGISTER OK", "c> CONNECT OK", "c> PUBLISH OK", "c> PUBLISH OK", "c> SEARCH OK",
                #"alice lecture-notes.pdf "week one of algebra""#, "c> SEARCH OK", "c> SEARCH FAIL",
                "c> DISCONNECT OK",
            ])
        await server.stop()
        await time.stop()
    }

    /// Closes every connection as soon as something arrives, without a reply: what a server
    /// does with an operation it does not know. With `reset`, the close is a TCP reset (as
    /// from a server that closes with unread bytes, or crashes its handler).
    final class ClosesUnknownOperations: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let reset: Bool
        init(reset: Bool) { self.reset = reset }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if reset, let provider = context.channel as? any SocketOptionProvider {
                let channel = context.channel
                provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
            } else {
                context.close(promise: nil)
            }
        }
    }

    @Test(arguments: [false, true])
    func searchAgainstAServerWithoutItSaysSoAndGoesOn(reset: Bool) async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let time = try await TimeProcess()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ClosesUnknownOperations(reset: reset))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try ClientProcess(
            serverPort: server.localAddress!.port!, timeURL: time.url, directory: folder.path)
        #expect(try await client.run("SEARCH notes") == "c> SEARCH FAIL")
        #expect(client.process.stderrLines.contains { $0.contains("SEARCH: the directory server does not support it") })
        #expect(!client.process.stderrLines.contains { $0.contains("unreachable") })
        #expect(try await client.run("LIST_USERS") == "c> LIST_USERS FAIL")
        _ = try await client.finish()
        try await server.close()
        await time.stop()
    }
}
