import Foundation
import NIOCore
import NIOPosix
import P2PClient
import P2PProtocol
import P2PTestSupport
import P2PTimeSOAP
import Synchronization
import Testing

/// `p2p-conformance` run as its users run it: against our own programs everything passes;
/// against stand-ins broken in one way, the check of that rule fails and nothing else does.
@Suite struct ConformanceTests {
    /// Runs `p2p-conformance ARGUMENTS --json`: its exit status and each check's result.
    static func conformance(_ arguments: [String]) async throws -> (
        status: Int32, results: [String: String], json: [String: Any]
    ) {
        let process = try ChildProcess(builtProduct("p2p-conformance"), arguments + ["--json"])
        let status = try await process.waitForExit(timeout: 120)
        let text = process.stdoutLines.joined(separator: "\n")
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let checks = object["checks"] as? [[String: Any]]
        else { throw SetupError("not JSON: \(text.prefix(300)); stderr: \(process.stderrLines.suffix(3))") }
        var results: [String: String] = [:]
        for check in checks {
            results[check["id"] as! String] = check["result"] as? String
        }
        return (status, results, object)
    }

    static func failed(_ results: [String: String]) -> Set<String> {
        Set(results.filter { $0.value == "failed" }.keys)
    }

    @Test func ourServerPeerAndTimeServicePassEverything() async throws {
        let folder = try TemporaryDirectory("conformance")
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let time = try await TimeProcess()
        let home = folder.file("home")
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        let content = Data((0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try content.write(to: URL(fileURLWithPath: "\(home)/data.bin"))
        let client = try ClientProcess(serverPort: server.port, timeURL: time.url, directory: home)
        #expect(try await client.run("REGISTER owner") == "c> REGISTER OK")
        #expect(try await client.run("CONNECT owner") == "c> CONNECT OK")
        #expect(try await client.run("PUBLISH data.bin some bytes") == "c> PUBLISH OK")

        let onServer = try await Self.conformance(["server", "127.0.0.1:\(server.port)"])
        #expect(onServer.status == 0 && Self.failed(onServer.results).isEmpty, "\(onServer.json)")
        #expect(onServer.results.count == 16 && onServer.results.values.allSatisfy { $0 == "passed" })
        // It removed what it made: only the owner is left.
        let directory = DirectoryClient(host: "127.0.0.1", port: server.port)
        guard
            case .users(let users) = try await directory.send(
                Request(dateTime: "03/12/2026 10:00:00", command: .listUsers(user: "owner")))
        else { throw SetupError("LIST_USERS failed") }
        #expect(users.map(\.name) == ["owner"])

        guard
            case .users(let listed) = try await directory.send(
                Request(dateTime: "03/12/2026 10:00:00", command: .listUsers(user: "owner"))),
            let port = listed.first?.port
        else { throw SetupError("the owner is not listed") }
        let onPeer = try await Self.conformance([
            "peer", "127.0.0.1:\(port)", "data.bin", "--local-copy", "\(home)/data.bin",
        ])
        #expect(
            onPeer.status == 0 && onPeer.results.count == 6 && Self.failed(onPeer.results).isEmpty, "\(onPeer.json)")

        let onTime = try await Self.conformance(["time", time.url])
        #expect(
            onTime.status == 0 && onTime.results.count == 3 && Self.failed(onTime.results).isEmpty, "\(onTime.json)")

        // --quick and --only choose; a name that matches nothing is a usage error.
        let quick = try await Self.conformance(["server", "127.0.0.1:\(server.port)", "--quick"])
        #expect(
            Set(quick.results.keys) == [
                "server.reachable", "server.register", "server.unregister",
                "server.connect", "server.publish", "server.list-users",
            ])
        let only = try await Self.conformance([
            "server", "127.0.0.1:\(server.port)", "--only", "register", "--only", "delete",
        ])
        #expect(Set(only.results.keys) == ["server.register", "server.delete"])
        let typo = try ChildProcess(
            builtProduct("p2p-conformance"), ["server", "127.0.0.1:\(server.port)", "--only", "regster"])
        #expect(try await typo.waitForExit() == 64)
        #expect(typo.stderrLines.contains { $0.contains("no check is named regster") }, "\(typo.stderrLines)")
        _ = try await client.finish()
        await server.stop()
        await time.stop()
    }

    @Test func aRawByteServerPassesAndIsNamed() async throws {
        let folder = try TemporaryDirectory("conformance")
        defer { folder.remove() }
        let server = try await ServerProcess(
            dataDirectory: folder.file("storage"), arguments: ["--no-oplog", "--result-encoding", "byte"])
        let run = try await Self.conformance(["server", "127.0.0.1:\(server.port)"])
        #expect(run.status == 0 && Self.failed(run.results).isEmpty, "\(run.json)")
        let checks = run.json["checks"] as? [[String: Any]] ?? []
        #expect(
            checks.first { $0["id"] as? String == "server.reachable" }?["note"] as? String
                == "result codes as raw bytes")
        await server.stop()
    }

    @Test(arguments: [
        (MisbehavingServer.Fault.acceptsDuplicateRegister, Set(["server.register", "server.concurrent-register"])),
        (.losesConcurrentPublishes, Set(["server.concurrent-publish"])),
        (.crashesOnLongField, Set(["server.oversized-field"])),
    ])
    func aBrokenServerFailsTheMatchingCheckOnly(_ fault: MisbehavingServer.Fault, _ expected: Set<String>) async throws
    {
        let folder = try TemporaryDirectory("conformance")
        defer { folder.remove() }
        let server = try await ServerProcess(dataDirectory: folder.file("storage"))
        let broken = try await MisbehavingServer(
            fault: fault, upstream: try SocketAddress(ipAddress: "127.0.0.1", port: server.port))
        let run = try await Self.conformance(["server", "127.0.0.1:\(broken.port)"])
        #expect(run.status == 1)
        #expect(Self.failed(run.results) == expected, "\(run.json)")
        // The failure names the rule and shows the bytes.
        let checks = run.json["checks"] as? [[String: Any]] ?? []
        for check in checks where check["result"] as? String == "failed" {
            #expect((check["message"] as? String)?.isEmpty == false)
            #expect((check["exchanges"] as? [Any])?.isEmpty == false)
        }
        await broken.stop()
        await server.stop()
    }

    @Test func aPeerThatServesParentPathsFailsThatCheckOnly() async throws {
        let folder = try TemporaryDirectory("conformance")
        defer { folder.remove() }
        let shared = folder.file("shared")
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        try Data("a shared file".utf8).write(to: URL(fileURLWithPath: "\(shared)/f.txt"))
        let peer = try await NaivePeer(folder: shared)
        let run = try await Self.conformance([
            "peer", "127.0.0.1:\(peer.port)", "f.txt", "--local-copy", "\(shared)/f.txt",
        ])
        #expect(run.status == 1)
        #expect(Self.failed(run.results) == ["peer.parent-path"], "\(run.json)")
        await peer.stop()
    }

    @Test func aTimeServiceWithTheWrongFormatFailsTheFormatCheckOnly() async throws {
        let service = try await WrongFormatTimeService(answer: "2026-12-03T10:00:00")
        let run = try await Self.conformance(["time", "http://127.0.0.1:\(service.port)"])
        #expect(run.status == 1)
        #expect(Self.failed(run.results) == ["time.format"], "\(run.json)")
        await service.stop()
    }
}

/// A TCP server that answers each connection with `respond` (the bytes received so far, and
/// whether the client ended its side) once `respond` returns non-nil, then closes.
final class OneShotServer: Sendable {
    let port: Int
    private let channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    private let task: Task<Void, Never>

    init(respond: @escaping @Sendable ([UInt8], _ ended: Bool) async -> [UInt8]?) async throws {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        self.channel = channel
        port = channel.channel.localAddress!.port!
        task = Task {
            try? await withThrowingDiscardingTaskGroup { group in
                try await channel.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask {
                            try? await connection.executeThenClose { input, output in
                                var received: [UInt8] = []
                                for try await chunk in input {
                                    received += chunk.readableBytesView
                                    if let reply = await respond(received, false) {
                                        try await output.write(ByteBuffer(bytes: reply))
                                        return
                                    }
                                }
                                if let reply = await respond(received, true) {
                                    try await output.write(ByteBuffer(bytes: reply))
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    func stop() async {
        try? await channel.channel.close()
        task.cancel()
        await task.value
    }
}

/// A directory server with one fault: a proxy in front of our real server that changes one
/// behaviour and forwards everything else unchanged.
final class MisbehavingServer: Sendable {
    enum Fault: Sendable {
        /// Answers 0 to a REGISTER of a name already registered.
        case acceptsDuplicateRegister
        /// Answers 0 to a PUBLISH that arrives while another is in flight, without storing it.
        case losesConcurrentPublishes
        /// Stops serving altogether when a field is longer than the protocol allows.
        case crashesOnLongField
    }

    private final class State: Sendable {
        let inFlight = Atomic<Int>(0)
        let crashed = Atomic<Bool>(false)
    }

    private let server: OneShotServer
    var port: Int { server.port }

    init(fault: Fault, upstream: SocketAddress) async throws {
        let state = State()
        server = try await OneShotServer { received, ended in
            if state.crashed.load(ordering: .relaxed) { return [] }
            var decoder = RequestDecoder()
            var buffer = ByteBuffer(bytes: received)
            let request: Request
            do {
                guard let complete = try decoder.decode(&buffer) else {
                    guard ended else { return nil }
                    return (try? await RawConnection.exchange(received, with: upstream, halfClose: true)) ?? []
                }
                request = complete
            } catch {
                if case .fieldTooLong? = error as? ProtocolError, fault == .crashesOnLongField {
                    state.crashed.store(true, ordering: .relaxed)
                    return []
                }
                return (try? await RawConnection.exchange(received, with: upstream, halfClose: true)) ?? []
            }
            if fault == .losesConcurrentPublishes, request.operation == .publish {
                let busy = state.inFlight.add(1, ordering: .relaxed).newValue > 1
                defer { state.inFlight.subtract(1, ordering: .relaxed) }
                if busy { return Array("0\0".utf8) }
                return (try? await RawConnection.exchange(received, with: upstream, halfClose: true)) ?? []
            }
            var reply = (try? await RawConnection.exchange(received, with: upstream, halfClose: true)) ?? []
            if fault == .acceptsDuplicateRegister, request.operation == .register, reply == Array("1\0".utf8) {
                reply = Array("0\0".utf8)
            }
            return reply
        }
    }

    func stop() async { await server.stop() }
}

/// A peer that joins the requested name to its folder without looking at it: `../` climbs out.
final class NaivePeer: Sendable {
    private let server: OneShotServer
    var port: Int { server.port }

    init(folder: String) async throws {
        server = try await OneShotServer { received, ended in
            let fields = received.split(separator: 0, omittingEmptySubsequences: false)
            guard fields.count >= 3 else { return ended ? [] : nil }
            let name = String(decoding: fields[1], as: UTF8.self)
            guard let data = FileManager.default.contents(atPath: folder + "/" + name) else { return Array("1\0".utf8) }
            return Array("0\0".utf8) + Array(data)
        }
    }

    func stop() async { await server.stop() }
}

/// A time service whose get_time answers `answer` (a date-time in the wrong format).
final class WrongFormatTimeService: Sendable {
    private let server: OneShotServer
    var port: Int { server.port }

    init(answer: String) async throws {
        server = try await OneShotServer { received, _ in
            let text = String(decoding: received, as: UTF8.self)
            guard let headEnd = text.range(of: "\r\n\r\n") else { return nil }
            let length =
                text[..<headEnd.lowerBound].split(separator: "\r\n")
                .first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
            guard text.utf8.count - text[..<headEnd.upperBound].utf8.count >= length else { return nil }
            let body =
                text.hasPrefix("GET")
                ? WSDLDocument.xml(location: "http://127.0.0.1/") : SOAPEnvelope.response(result: answer)
            let response =
                """
                HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: \
                \(body.utf8.count)\r\nConnection: close\r\n\r\n
                """
                + body
            return Array(response.utf8)
        }
    }

    func stop() async { await server.stop() }
}
