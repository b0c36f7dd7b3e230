import Foundation
import Logging
import P2PTestSupport
import Synchronization
import Testing

@testable import P2PClient

/// Stopping the peer's file server while downloaders are still connecting: the client does not
/// crash. (NIO can accept a connection just as the listener
/// closes and never hand it to the accept loop; swift-nio #3481.)
@Suite struct PeerFileServerStopTests {
    @Test func stoppingWhileConnectionsArriveClosesThemAll() async throws {
        let folder = try TemporaryDirectory("stop")
        defer { folder.remove() }
        let shared = try SharedFolder(path: folder.path)
        var connections = 0
        for _ in 0..<60 {
            let server = try await PeerFileServer.start(folder: shared, host: "127.0.0.1", logger: quietLogger)
            let port = server.port
            let stop = Atomic<Bool>(false)
            // Plain blocking sockets, connecting and closing as fast as they can until the stop.
            let connecting = Task.detached {
                var connections = 0
                while !stop.load(ordering: .relaxed) {
                    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                    var address = sockaddr_in()
                    address.sin_family = sa_family_t(AF_INET)
                    address.sin_port = in_port_t(UInt16(port).bigEndian)
                    address.sin_addr.s_addr = inet_addr("127.0.0.1")
                    let connected = withUnsafePointer(to: &address) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                        }
                    }
                    close(fd)
                    if connected != 0 { break }
                    connections += 1
                }
                return connections
            }
            try await Task.sleep(for: .milliseconds(5))
            await server.stop()
            stop.store(true, ordering: .relaxed)
            connections += await connecting.value
        }
        // Before the fix, a run like this trapped within a few stops ("Deinited NIOAsyncWriter
        // without calling finish()"): connections did arrive while the server stopped.
        #expect(connections > 0)
    }
}
