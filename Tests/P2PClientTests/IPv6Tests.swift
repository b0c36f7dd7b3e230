import Foundation
import NIOCore
import P2PClient
import P2PNetworkSupport
import P2PProtocol
import P2PTestSupport
import Testing

/// Whether this machine has an IPv6 loopback to test on (`::1`).
let ipv6LoopbackAvailable: Bool = {
    let descriptor = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { return false }
    defer { close(descriptor) }
    var address = sockaddr_in6()
    address.sin6_family = sa_family_t(AF_INET6)
    address.sin6_addr = in6addr_loopback
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) == 0
        }
    }
}()

/// The whole system over IPv6 and IPv4 at once: a dual-stack directory server (`--host ::`), a
/// time service and a web side on `::1`, one client talking IPv6 and one IPv4, files going
/// both ways between them.
@Suite(.enabled(if: ipv6LoopbackAvailable, "needs an IPv6 loopback (::1)"))
struct IPv6Tests {
    @Test func aDualStackServerListsEachClientAsItConnected() async throws {
        let folder = try TemporaryDirectory("ipv6")
        defer { folder.remove() }
        let server = try await ServerProcess(
            dataDirectory: folder.file("storage"), arguments: ["--no-oplog", "--http-port", "0", "--http-host", "::1"],
            host: "::")
        let time = try await TimeProcess(host: "::1")
        defer {
            Task {
                await server.stop()
                await time.stop()
            }
        }
        #expect(time.url.hasPrefix("http://[::1]:"))
        for name in ["alice", "bob"] {
            try FileManager.default.createDirectory(atPath: folder.file(name), withIntermediateDirectories: true)
        }
        try Data("over IPv6".utf8).write(to: URL(fileURLWithPath: folder.file("alice/six.txt")))
        try Data("over IPv4".utf8).write(to: URL(fileURLWithPath: folder.file("bob/four.txt")))

        // alice talks to the server over IPv6 (brackets as a user would type them), bob over IPv4.
        let alice = try ClientProcess(
            serverPort: server.port, timeURL: time.url, directory: folder.file("alice"), serverHost: "[::1]")
        let bob = try ClientProcess(
            serverPort: server.port, timeURL: time.url, directory: folder.file("bob"), serverHost: "127.0.0.1")
        for (client, name, file) in [(alice, "alice", "six.txt"), (bob, "bob", "four.txt")] {
            #expect(try await client.run("REGISTER \(name)") == "c> REGISTER OK")
            #expect(try await client.run("CONNECT \(name)") == "c> CONNECT OK")
            #expect(try await client.run("PUBLISH \(file) a file") == "c> PUBLISH OK")
        }

        // As recorded: alice at ::1, bob at plain 127.0.0.1 (never ::ffff:127.0.0.1), for a
        // third-party client reading the list over IPv4 too.
        let directory = DirectoryClient(host: "127.0.0.1", port: server.port)
        guard
            case .users(let users) = try await directory.send(
                Request(dateTime: "03/12/2026 10:00:00", command: .listUsers(user: "bob")))
        else {
            Issue.record("LIST_USERS failed")
            return
        }
        #expect(
            Dictionary(uniqueKeysWithValues: users.map { ($0.name, $0.ip) }) == ["alice": "::1", "bob": "127.0.0.1"])

        // The owner check compares the address as recorded: alice's DISCONNECT from IPv4 is refused.
        #expect(
            try await directory.send(Request(dateTime: "03/12/2026 10:00:00", command: .disconnect(user: "alice")))
                == .status(3))

        // Files both ways: bob fetches from alice's peer server at ::1, alice from bob's at
        // 127.0.0.1 (both peer servers listen dual-stack).
        #expect(try await bob.run("GET_FILE alice six.txt got-six.txt") == "c> GET_FILE OK")
        #expect(try await alice.run("GET_FILE bob four.txt got-four.txt") == "c> GET_FILE OK")
        #expect(try String(contentsOfFile: folder.file("bob/got-six.txt"), encoding: .utf8) == "over IPv6")
        #expect(try String(contentsOfFile: folder.file("alice/got-four.txt"), encoding: .utf8) == "over IPv4")
        _ = try await alice.finish()
        _ = try await bob.finish()

        // The web side on ::1.
        let line = try #require(server.process.stdoutLines.first { $0.hasPrefix("s> web page: http://[::1]:") })
        let webPort = try #require(Int(line.split(separator: ":").last!.dropLast()))
        let health = try await RawConnection.exchange(
            Array("GET /health HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n".utf8),
            with: SocketAddress(ipAddress: "::1", port: webPort))
        #expect(String(decoding: health, as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        await server.stop()
        await time.stop()
    }
}
