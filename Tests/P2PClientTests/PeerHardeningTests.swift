import Foundation
import NIOCore
import P2PNetworkSupport
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PClient

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 43 against an in-process peer of ours: what an outsider sends to a client's file
/// server, byte for byte, neither kills it, nor freezes it, nor holds its slots for good.
@Suite struct PeerHardeningTests {
    static func files(_ folder: TemporaryDirectory, _ contents: [String: String]) throws -> String {
        let share = folder.file("share")
        try FileManager.default.createDirectory(atPath: share + "/sub", withIntermediateDirectories: true)
        for (name, content) in contents {
            try Data(content.utf8).write(to: URL(fileURLWithPath: "\(share)/\(name)"))
        }
        return share
    }

    static func get(_ name: String, port: Int, from source: String? = nil) async throws -> [UInt8] {
        try await RawConnection.exchange(
            RawConnection.fields("GET_FILE", name), with: try SocketAddress(ipAddress: "127.0.0.1", port: port),
            from: try source.map { try SocketAddress(ipAddress: $0, port: 0) })
    }

    @Test func aRangeEndingPastInt64IsRefusedAndTheServerGoesOn() async throws {
        let folder = try TemporaryDirectory("hardening-range")
        defer { folder.remove() }
        let shared = try SharedFolder(path: try Self.files(folder, ["notes.txt": "hello"]))
        shared.publish("notes.txt")
        let server = try await PeerFileServer.start(folder: shared, host: "127.0.0.1", logger: quietLogger)
        for name in [
            "/.p2p-reserved/v1/range/9223372036854775807-1/notes.txt",
            "/.p2p-reserved/v1/range/1-9223372036854775807/notes.txt",
            "/.p2p-reserved/v1/range/6-0/notes.txt",
        ] {
            let reply = try await Self.get(name, port: server.port)
            #expect(reply == Array("1\0".utf8) || reply == Array("2\0".utf8), "\(name): \(reply)")
        }
        #expect(try await Self.get("notes.txt", port: server.port) == Array("0\0hello".utf8))
        await server.stop()
    }

    @Test func hiddenNamesAreNotServedEvenWhenPublished() async throws {
        let folder = try TemporaryDirectory("hardening-hidden")
        defer { folder.remove() }
        let share = try Self.files(folder, [".hidden": "dot", "notes.txt": "hello"])
        try FileManager.default.createDirectory(atPath: share + "/.ssh", withIntermediateDirectories: true)
        try Data("key".utf8).write(to: URL(fileURLWithPath: share + "/.ssh/id_ed25519"))
        let shared = try SharedFolder(path: share)
        shared.publish(contentsOf: [".hidden", ".ssh/id_ed25519", "sub/../.hidden", "notes.txt"])
        let server = try await PeerFileServer.start(folder: shared, host: "127.0.0.1", logger: quietLogger)
        for name in [".hidden", ".ssh/id_ed25519", "sub/../.hidden"] {
            #expect(try await Self.get(name, port: server.port) == Array("1\0".utf8), "\(name) must not be served")
        }
        #expect(try await Self.get("notes.txt", port: server.port) == Array("0\0hello".utf8))
        await server.stop()
    }

    /// Two connections presenting the same reversed token: the second is closed at once, and
    /// stopping the server (DISCONNECT, QUIT) does not wait for the first, parked one.
    @Test func aRepeatedReversedTokenNeitherLeaksNorFreezesTheStop() async throws {
        let folder = try TemporaryDirectory("hardening-reversed")
        defer { folder.remove() }
        let shared = try SharedFolder(path: try Self.files(folder, ["notes.txt": "hello"]))
        let server = try await PeerFileServer.start(folder: shared, host: "127.0.0.1", logger: quietLogger)
        let port = server.port
        let name = "/.p2p-reserved/v1/reversed/x"
        let parked = Task { try await Self.get(name, port: port) }
        // The first one parked (a repeat must not replace it); the second ends without a byte.
        try await waitUntil("the first connection parked") {
            server.reversedConnections.parkedCount == 1
        }
        #expect(try await Self.get(name, port: port) == [])
        let stopped = Locked(false)
        Task {
            await server.stop()
            stopped.withLock { $0 = true }
        }
        try await waitUntil("the server stopped within 2 s", timeout: 2) { stopped.value }
        _ = try? await parked.value
    }

    /// Tokens presented by strangers are parked in bounded number: the rest are closed at once.
    @Test func parkedReversedConnectionsAreBounded() async throws {
        let folder = try TemporaryDirectory("hardening-parked")
        defer { folder.remove() }
        let shared = try SharedFolder(path: try Self.files(folder, [:]))
        let server = try await PeerFileServer.start(
            folder: shared, host: "127.0.0.1", limits: UploadLimits(maxConnectionsPerAddress: 64), logger: quietLogger)
        let port = server.port
        var parked: [Task<[UInt8], any Error>] = []
        for index in 0..<ReversedConnections.maxParked {
            parked.append(Task { try await Self.get("/.p2p-reserved/v1/reversed/t\(index)", port: port) })
        }
        try await waitUntil("\(ReversedConnections.maxParked) parked") {
            server.reversedConnections.parkedCount == ReversedConnections.maxParked
        }
        #expect(try await Self.get("/.p2p-reserved/v1/reversed/one-more", port: port) == [])
        #expect(server.reversedConnections.parkedCount == ReversedConnections.maxParked)
        await server.stop()
        for task in parked { _ = try? await task.value }
    }

    /// A connection that asks for a large file and never reads gives its slot back after the
    /// stall timeout; until then the other downloader is answered 2, after it served.
    @Test func aStalledUploadGivesItsSlotBack() async throws {
        let folder = try TemporaryDirectory("hardening-stall")
        defer { folder.remove() }
        let share = try Self.files(folder, ["notes.txt": "hello"])
        // 256 MiB without writing them: far more than the sockets' buffers hold.
        let big = open(share + "/big.bin", O_CREAT | O_WRONLY, 0o644)
        #expect(ftruncate(big, 256 << 20) == 0)
        close(big)
        let shared = try SharedFolder(path: share)
        shared.publish(contentsOf: ["notes.txt", "big.bin"])
        let server = try await PeerFileServer.start(
            folder: shared, host: "127.0.0.1", limits: UploadLimits(maxUploads: 1, stallTimeout: .seconds(2)),
            logger: quietLogger)
        let stalled = try StalledReader(port: server.port, request: RawConnection.fields("GET_FILE", "big.bin"))
        defer { stalled.close() }
        try await waitUntil("the stalled download holds the only slot") { server.uploadCount == 1 }
        #expect(try await Self.get("notes.txt", port: server.port) == Array("2\0".utf8))
        try await waitUntil("the slot given back", timeout: 10) {
            (try? await Self.get("notes.txt", port: server.port)) == Array("0\0hello".utf8)
        }
        #expect(stalled.wasClosed())
        await server.stop()
    }

    @Test func connectionsFromOneAddressAreCapped() async throws {
        let folder = try TemporaryDirectory("hardening-per-address")
        defer { folder.remove() }
        let shared = try SharedFolder(path: try Self.files(folder, ["notes.txt": "hello"]))
        shared.publish("notes.txt")
        let server = try await PeerFileServer.start(
            folder: shared, host: "127.0.0.1", limits: UploadLimits(maxConnectionsPerAddress: 2), logger: quietLogger)
        let silent = try (0..<2).map { _ in try StalledReader(port: server.port, request: [], from: "127.0.0.5") }
        try await waitUntil("both silent connections counted") { server.connectionCount(from: "127.0.0.5") == 2 }
        #expect(try await Self.get("notes.txt", port: server.port, from: "127.0.0.5") == Array("2\0".utf8))
        // Another address is served all the same.
        #expect(try await Self.get("notes.txt", port: server.port, from: "127.0.0.6") == Array("0\0hello".utf8))
        for connection in silent { connection.close() }
        try await waitUntil("127.0.0.5 served again") {
            (try? await Self.get("notes.txt", port: server.port, from: "127.0.0.5")) == Array("0\0hello".utf8)
        }
        await server.stop()
    }

    /// A symbolic link planted where the hidden partial file goes (in a folder others can write
    /// to) is not followed: the file it points to stays as it was.
    @Test func aPlantedSymlinkAtThePartialFileIsNotFollowed() async throws {
        let folder = try TemporaryDirectory("hardening-partial")
        defer { folder.remove() }
        let content = RangedDownloadTests.randomBytes(10_000)
        let peer = try await RangedDownloadTests.ourPeer(["data.bin": content], in: folder, named: "owner")
        let downloads = folder.file("downloads")
        try FileManager.default.createDirectory(atPath: downloads, withIntermediateDirectories: true)
        let victim = folder.file("victim.txt")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: victim))
        let local = downloads + "/copy.bin"
        let partial = RangedDownload.partialPath(for: local)
        try FileManager.default.createSymbolicLink(atPath: partial, withDestinationPath: victim)
        // And a record that claims the partial file is one of an earlier attempt.
        let record = RangedDownload.Record(
            owners: ["owner"], remoteName: "data.bin", size: 10_000, sha256: RangedDownloadTests.sha256(content),
            done: [0])
        try record.text.write(toFile: partial + ".info", atomically: true, encoding: .utf8)
        try await FileDownloader().fetch("data.bin", from: [RangedDownloadTests.source("owner", peer.port)], to: local)
        #expect(try Data(contentsOf: URL(fileURLWithPath: local)) == Data(content))
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious")
        await peer.stop()
    }

    @Test func anAnnouncedSizeBeyondTheLimitFailsAtOnce() async throws {
        let folder = try TemporaryDirectory("hardening-size")
        defer { folder.remove() }
        let peer = try await RangedDownloadTests.ourPeer(
            ["data.bin": RangedDownloadTests.randomBytes(5000)], in: folder, named: "owner")
        let local = folder.file("copy.bin")
        await #expect(throws: DownloadError.self) {
            try await FileDownloader(maxSize: 4096).fetch(
                "data.bin", from: [RangedDownloadTests.source("owner", peer.port)], to: local)
        }
        #expect(!FileManager.default.fileExists(atPath: local))
        #expect(!FileManager.default.fileExists(atPath: RangedDownload.partialPath(for: local)))
        await peer.stop()
    }
}

/// A TCP connection made with a tiny receive buffer that sends `request` and never reads: a
/// downloader that holds an upload without taking its bytes.
final class StalledReader: Sendable {
    let descriptor: Int32

    init(port: Int, request: [UInt8], from source: String = "127.0.0.1") throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var small: Int32 = 4096
        setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = inet_addr(source)
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_addr.s_addr = inet_addr("127.0.0.1")
        remote.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &local) { localPointer in
            withUnsafePointer(to: &remote) { remotePointer in
                localPointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { l in
                    remotePointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { r in
                        bind(descriptor, l, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                            && connect(descriptor, r, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                    }
                }
            }
        }
        guard connected, request.isEmpty || write(descriptor, request, request.count) == request.count else {
            Glibc.close(descriptor)
            throw SetupError("cannot connect to 127.0.0.1:\(port) from \(source)")
        }
    }

    /// Whether the other side has closed or reset the connection (read past what is buffered).
    func wasClosed() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        while true {
            let count = read(descriptor, &buffer, buffer.count)
            if count == 0 || (count < 0 && errno == ECONNRESET) { return true }
            if count < 0 { return false }
        }
    }

    func close() { Glibc.close(descriptor) }
}
