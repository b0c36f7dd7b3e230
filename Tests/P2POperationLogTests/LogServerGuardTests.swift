import Foundation
import P2PTestSupport
import Testing

/// ONC-RPC calls written byte by byte, as any program on the network could send them.
enum RawRPC {
    static let program: UInt32 = 0x2000_0099

    /// What the log server answered.
    enum Outcome: Equatable {
        /// Accepted and run: the procedure's int result.
        case success(Int32)
        /// Accepted, but the arguments could not be decoded (RPC accept_stat 4).
        case garbageArguments
        /// Refused as an authentication error (RPC reject_stat 1) with this auth_stat.
        case authenticationError(UInt32)
        case other([UInt8])
    }

    static func xdr(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
    }

    static func xdr(_ text: String) -> [UInt8] {
        let bytes = Array(text.utf8)
        return xdr(UInt32(bytes.count)) + bytes + Array(repeating: 0, count: (4 - bytes.count % 4) % 4)
    }

    /// PRINT_RESULTS' arguments: `count` on the wire, then the records (which may be fewer).
    static func results(count: UInt32, records: [(user: String, result: Int32)]) -> [UInt8] {
        xdr(count)
            + records.flatMap { record in
                xdr(record.user) + xdr("REGISTER") + xdr("") + xdr("03/12/2026 10:00:00")
                    + xdr(UInt32(bitPattern: record.result))
            }
    }

    /// One call over TCP from `source` to the log server's `port`; the decoded reply.
    static func call(
        port: Int, from source: String = "127.0.0.1", version: UInt32, procedure: UInt32, arguments: [UInt8]
    )
        throws -> Outcome
    {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SetupError("socket: \(errno)") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        func address(_ ip: String, _ port: Int) -> sockaddr_in {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, ip, &address.sin_addr)
            return address
        }
        var local = address(source, 0)
        var remote = address("127.0.0.1", port)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        let connected = withUnsafePointer(to: &remote) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, connected == 0 else { throw SetupError("cannot connect to port \(port) from \(source)") }
        // xid, CALL, RPC version 2, program, version, procedure, AUTH_NONE credentials and verifier.
        let body =
            xdr(0x1234_5678) + xdr(0) + xdr(2) + xdr(program) + xdr(version) + xdr(procedure)
            + xdr(0) + xdr(0) + xdr(0) + xdr(0) + arguments
        let record = xdr(0x8000_0000 | UInt32(body.count)) + body
        var sent = 0
        while sent < record.count {
            let n = record[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw SetupError("send failed: \(errno)") }
            sent += n
        }
        func read(_ count: Int) throws -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: count)
            var got = 0
            while got < count {
                let n = bytes[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { throw SetupError("the log server closed or timed out (\(errno))") }
                got += n
            }
            return bytes
        }
        let mark = try read(4)
        let length = Int(UInt32(mark[0] & 0x7F) << 24 | UInt32(mark[1]) << 16 | UInt32(mark[2]) << 8 | UInt32(mark[3]))
        let reply = try read(length)
        func word(_ index: Int) -> UInt32 {
            reply.count >= index * 4 + 4
                ? reply[(index * 4)..<(index * 4 + 4)].reduce(0) { $0 << 8 | UInt32($1) } : .max
        }
        // xid, REPLY, reply_stat ...
        guard word(1) == 1 else { return .other(reply) }
        if word(2) == 1 {
            // MSG_DENIED: reject_stat AUTH_ERROR (1), then auth_stat.
            return word(3) == 1 ? .authenticationError(word(4)) : .other(reply)
        }
        // MSG_ACCEPTED: verifier (flavor, length 0), accept_stat, result.
        switch word(5) {
        case 0: return .success(Int32(bitPattern: word(6)))
        case 4: return .garbageArguments
        default: return .other(reply)
        }
    }
}

extension LogServerSuites {
    /// The log server prints records only for the senders it was told to trust, and no call
    /// makes it allocate beyond the batch bound of operations.x.
    @Suite struct LogServerGuardTests {
        /// The TCP port the server reported when it started.
        static func port(of server: OperationLogServer) async throws -> Int {
            var port: Int?
            try await waitUntil("p2p-oplog to say its port") {
                port =
                    server.process.stderrLines.lazy.compactMap { line in
                        line.range(of: "tcp port ").flatMap { Int(line[$0.upperBound...].prefix { $0.isNumber }) }
                    }.first
                return port != nil
            }
            return port!
        }

        @Test func onlyAllowedSendersArePrinted() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(
                logFile: folder.file("oplog.txt"), arguments: ["--allow", "127.0.0.2"])
            let port = try await Self.port(of: server)
            let one = RawRPC.results(count: 1, records: [("mallory", 0)])
            for _ in 0..<20 {
                // AUTH_TOOWEAK (5).
                #expect(
                    try RawRPC.call(port: port, from: "127.0.0.1", version: 2, procedure: 2, arguments: one)
                        == .authenticationError(5))
            }
            #expect(
                try RawRPC.call(
                    port: port, from: "127.0.0.2", version: 2, procedure: 2,
                    arguments: RawRPC.results(count: 1, records: [("alice", 0)])) == .success(0))
            try await waitUntil("alice's line") { server.lines.count == 1 }
            #expect(server.lines == ["alice REGISTER 03/12/2026 10:00:00"])
            // Twenty refusals, one line about them (the rest are summed up after 10 s).
            #expect(server.process.stderrLines.filter { $0.contains("refused a call from 127.0.0.1") }.count == 1)
            await server.stop()
        }

        @Test func theDefaultAllowsTheLoopbackAddresses() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(logFile: folder.file("oplog.txt"))
            let port = try await Self.port(of: server)
            for (index, source) in ["127.0.0.1", "127.0.0.2"].enumerated() {
                #expect(
                    try RawRPC.call(
                        port: port, from: source, version: 2, procedure: 2,
                        arguments: RawRPC.results(count: 1, records: [("user\(index)", 0)])) == .success(0))
            }
            try await waitUntil("both lines") { server.lines.count == 2 }
            await server.stop()
        }

        @Test func aBatchBeyondTheBoundIsRefusedWhole() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(logFile: folder.file("oplog.txt"))
            let port = try await Self.port(of: server)
            // A count that would ask for gigabytes, with nothing behind it.
            #expect(
                try RawRPC.call(port: port, version: 2, procedure: 2, arguments: RawRPC.xdr(0x7FFF_FFFF))
                    == .garbageArguments)
            // One record beyond the bound, every record present.
            let tooMany = (0..<257).map { (user: "u\($0)", result: Int32(0)) }
            #expect(
                try RawRPC.call(
                    port: port, version: 2, procedure: 2,
                    arguments: RawRPC.results(count: 257, records: tooMany)) == .garbageArguments)
            // The bound itself is fine, and the server goes on serving.
            let bound = Array(tooMany.prefix(256))
            #expect(
                try RawRPC.call(
                    port: port, version: 2, procedure: 2,
                    arguments: RawRPC.results(count: 256, records: bound)) == .success(0))
            try await waitUntil("256 lines") { server.lines.count == 256 }
            #expect(server.lines.first == "u0 REGISTER 03/12/2026 10:00:00")
            #expect(!server.lines.contains { $0.hasPrefix("u256 ") })
            await server.stop()
        }

        @Test func itListensWhereItIsTold() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(
                logFile: folder.file("oplog.txt"), arguments: ["--listen", "127.0.0.1"])
            let port = try await Self.port(of: server)
            #expect(
                try RawRPC.call(
                    port: port, version: 1, procedure: 2,
                    arguments: RawRPC.xdr(0)) == .success(0))
            // Not on the machine's other addresses.
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var other = sockaddr_in()
            other.sin_family = sa_family_t(AF_INET)
            other.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, "127.0.0.2", &other.sin_addr)
            let connected = withUnsafePointer(to: &other) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            #expect(connected != 0)
            await server.stop()
        }
    }
}

extension LogServerSuites {
    /// `p2p-conformance oplog` against our log server: registered, versions 1 and 2 print.
    @Suite struct LogConformanceTests {
        @Test func ourLogServerPassesEveryCheck() async throws {
            let folder = try TemporaryDirectory()
            defer { folder.remove() }
            let server = try await OperationLogServer(logFile: folder.file("oplog.txt"))
            let run = try ChildProcess(builtProduct("p2p-conformance"), ["oplog", "localhost"])
            #expect(try await run.waitForExit(timeout: 60) == 0, "\(run.stdoutLines)")
            #expect(run.stdoutLines.filter { $0.hasPrefix("PASS") }.count == 4, "\(run.stdoutLines)")
            // One line per record sent: 1 + 3 in version 1, 3 in version 2.
            try await waitUntil("7 lines") { server.lines.count == 7 }
            #expect(server.lines.allSatisfy { $0.hasPrefix("p2p-conformance PUBLISH conformance.txt ") })
            await server.stop()
            // With nothing registered: the registration check fails, named.
            let down = try ChildProcess(
                builtProduct("p2p-conformance"), ["oplog", "localhost", "--only", "registered"])
            #expect(try await down.waitForExit(timeout: 60) == 1)
            #expect(
                down.stdoutLines.contains { $0.hasPrefix("FAIL  oplog.registered: cannot reach version 1") },
                "\(down.stdoutLines)")
        }
    }
}
