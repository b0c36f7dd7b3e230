import Foundation
import NIOCore
import P2PProtocol

/// A directory server under test, spoken to as the protocol's clients speak to it.
struct DirectoryUnderTest: Sendable {
    let endpoint: Endpoint
    let context: CheckContext
    /// A fresh prefix for this check's user names, so that a server in use is not disturbed
    /// and a second run does not meet the first one's names.
    let prefix: String

    static let dateTime: String = {
        let formatter = DateFormatter()
        formatter.dateFormat = "dd/MM/yyyy HH:mm:ss"
        formatter.locale = Locale(identifier: "en_US_POSIX")
        return formatter.string(from: Date())
    }()

    init(endpoint: Endpoint, context: CheckContext) {
        self.endpoint = endpoint
        self.context = context
        prefix = "cf" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
    }

    /// A user name of this check (`name` keeps several apart).
    func user(_ name: String) -> String { "\(prefix)-\(name)" }

    /// The request's bytes.
    static func bytes(_ command: Request.Command) -> [UInt8] {
        var buffer = ByteBuffer()
        try? RequestEncoder.encode(Request(dateTime: dateTime, command: command), into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// Sends one request and decodes the reply (either code encoding).
    func send(_ command: Request.Command, chunkSize: Int? = nil, pause: Duration = .zero) async throws
        -> (reply: Reply, raw: [UInt8], localIP: String?)
    {
        let request = Request(dateTime: Self.dateTime, command: command)
        let result = try await Wire.exchange(
            Self.bytes(command), with: endpoint, chunkSize: chunkSize, pauseBetweenChunks: pause, context: context)
        var buffer = ByteBuffer(bytes: result.received)
        var decoder = ReplyDecoder(operation: request.operation)
        do {
            guard let reply = try decoder.decode(&buffer) else {
                throw CheckFailed(
                    result.received.isEmpty
                        ? "no reply to \(request.operation.rawValue) (\(result.ending))"
                        : "incomplete reply to \(request.operation.rawValue): \(decoder.finish()) (\(result.ending))")
            }
            return (reply, result.received, result.localIP)
        } catch let error as ProtocolError {
            throw CheckFailed("unreadable reply to \(request.operation.rawValue): \(error)")
        }
    }

    /// The code of the reply to `command`.
    func code(_ command: Request.Command) async throws -> ResultCode {
        try await send(command).reply.code
    }

    /// Checks that `command` is answered `expected`, naming the rule when it is not.
    func expect(_ command: Request.Command, _ expected: ResultCode, _ rule: String) async throws {
        let code = try await code(command)
        try require(code == expected, "\(rule): expected code \(expected.rawValue), got \(code.rawValue)")
    }

    /// Registers `names` (each must get 0) and removes them when the check ends.
    func register(_ names: String...) async throws {
        for name in names {
            try await expect(.register(user: name), 0, "REGISTER of a new name answers 0")
            context.atEnd {
                _ = try? await self.code(.disconnect(user: name))
                _ = try? await self.code(.unregister(user: name))
            }
        }
    }

    /// Registers and connects `name` (listening port `port`).
    func connected(_ name: String, port: Int = 40_000) async throws {
        try await register(name)
        try await expect(.connect(user: name, port: String(port)), 0, "CONNECT of a registered user answers 0")
    }
}

extension Check {
    static func server(
        _ endpoint: Endpoint, _ name: String, quick: Bool = false, proves: String,
        _ body: @escaping @Sendable (DirectoryUnderTest) async throws -> Void
    ) -> Check {
        Check("server.\(name)", quick: quick, proves: proves) { context in
            try await body(DirectoryUnderTest(endpoint: endpoint, context: context))
        }
    }
}

/// Every rule of docs/PROTOCOL.md for the directory server's eight operations.
public enum ServerChecks {
    static func all(_ endpoint: Endpoint) -> [Check] {
        [
            .server(
                endpoint, "reachable", quick: true,
                proves:
                    """
                    the server accepts a connection and answers a REGISTER with a result code (the encoding is \
                    reported)
                    """
            ) { s in
                let name = s.user("a")
                let (reply, raw, _) = try await s.send(.register(user: name))
                s.context.atEnd { _ = try? await s.code(.unregister(user: name)) }
                try require(reply.code == 0, "REGISTER of a new name answers 0, got \(reply.code.rawValue)")
                s.context.note(
                    raw.first == UInt8(ascii: "0") ? "result codes as ASCII digits" : "result codes as raw bytes")
            },
            .server(
                endpoint, "register", quick: true,
                proves: "REGISTER answers 0 for a new name and 1 for a name already registered"
            ) { s in
                let name = s.user("a")
                try await s.register(name)
                try await s.expect(
                    .register(user: name), 1, "REGISTER of a registered name answers 1 (USERNAME IN USE)")
            },
            .server(
                endpoint, "unregister", quick: true,
                proves: "UNREGISTER answers 1 for an unknown user and 0 for a registered one, which is then gone"
            ) { s in
                let name = s.user("a")
                try await s.expect(.unregister(user: name), 1, "UNREGISTER of an unknown user answers 1")
                try await s.expect(.register(user: name), 0, "REGISTER of a new name answers 0")
                try await s.expect(.unregister(user: name), 0, "UNREGISTER of a registered user answers 0")
                try await s.expect(.register(user: name), 0, "after UNREGISTER the name is free again")
                try await s.expect(.unregister(user: name), 0, "UNREGISTER of a registered user answers 0")
            },
            .server(
                endpoint, "connect", quick: true,
                proves: "CONNECT answers 1 for an unknown user, 0 once, and 2 when already connected"
            ) { s in
                let name = s.user("a")
                try await s.expect(.connect(user: name, port: "40000"), 1, "CONNECT of an unknown user answers 1")
                try await s.connected(name)
                try await s.expect(.connect(user: name, port: "40001"), 2, "CONNECT of a connected user answers 2")
            },
            .server(
                endpoint, "disconnect",
                proves: "DISCONNECT answers 1 for an unknown user, 2 when not connected, 0 when connected"
            ) { s in
                let name = s.user("a")
                try await s.expect(.disconnect(user: name), 1, "DISCONNECT of an unknown user answers 1")
                try await s.register(name)
                try await s.expect(.disconnect(user: name), 2, "DISCONNECT of a user not connected answers 2")
                try await s.expect(.connect(user: name, port: "40000"), 0, "CONNECT of a registered user answers 0")
                try await s.expect(.disconnect(user: name), 0, "DISCONNECT of a connected user answers 0")
                try await s.expect(.disconnect(user: name), 2, "after DISCONNECT the user is no longer connected")
            },
            .server(
                endpoint, "publish", quick: true,
                proves: "PUBLISH answers 1 unknown user, 2 not connected, 0 new file, 3 already published"
            ) { s in
                let name = s.user("a")
                try await s.expect(
                    .publish(user: name, fileName: "a.txt", description: "d"), 1, "PUBLISH by an unknown user answers 1"
                )
                try await s.register(name)
                try await s.expect(
                    .publish(user: name, fileName: "a.txt", description: "d"), 2,
                    "PUBLISH by a user not connected answers 2")
                try await s.expect(.connect(user: name, port: "40000"), 0, "CONNECT of a registered user answers 0")
                try await s.expect(
                    .publish(user: name, fileName: "a.txt", description: "d"), 0, "PUBLISH of a new file answers 0")
                try await s.expect(
                    .publish(user: name, fileName: "a.txt", description: "other"), 3,
                    "PUBLISH of a file already published answers 3")
            },
            .server(
                endpoint, "delete",
                proves: "DELETE answers 1 unknown user, 2 not connected, 3 not published, 0 published"
            ) { s in
                let name = s.user("a")
                try await s.expect(.delete(user: name, fileName: "a.txt"), 1, "DELETE by an unknown user answers 1")
                try await s.register(name)
                try await s.expect(
                    .delete(user: name, fileName: "a.txt"), 2, "DELETE by a user not connected answers 2")
                try await s.expect(.connect(user: name, port: "40000"), 0, "CONNECT of a registered user answers 0")
                try await s.expect(
                    .delete(user: name, fileName: "a.txt"), 3, "DELETE of a file not published answers 3")
                try await s.expect(
                    .publish(user: name, fileName: "a.txt", description: "d"), 0, "PUBLISH of a new file answers 0")
                try await s.expect(.delete(user: name, fileName: "a.txt"), 0, "DELETE of a published file answers 0")
                try await s.expect(
                    .delete(user: name, fileName: "a.txt"), 3, "after DELETE the file is no longer published")
            },
            .server(
                endpoint, "list-users", quick: true,
                proves:
                    """
                    LIST_USERS answers 1 unknown, 2 not connected, and 0 with each connected user's name, address \
                    and port
                    """
            ) { s in
                let (a, b) = (s.user("a"), s.user("b"))
                try await s.expect(.listUsers(user: a), 1, "LIST_USERS by an unknown user answers 1")
                try await s.register(a)
                try await s.expect(.listUsers(user: a), 2, "LIST_USERS by a user not connected answers 2")
                try await s.expect(.connect(user: a, port: "40000"), 0, "CONNECT of a registered user answers 0")
                try await s.connected(b, port: 40_001)
                guard case .users(let users) = try await s.send(.listUsers(user: a)).reply else {
                    throw CheckFailed("LIST_USERS by a connected user answers 0 with the list")
                }
                for (user, port) in [(a, "40000"), (b, "40001")] {
                    guard let entry = users.first(where: { $0.name == user }) else {
                        throw CheckFailed("LIST_USERS lists every connected user: \(user) is missing")
                    }
                    try require(
                        entry.port == port,
                        "LIST_USERS gives the port sent with CONNECT: \(port) expected, got \(entry.port)")
                }
                let names = users.map(\.name)
                try require(
                    names == names.sorted(),
                    "LIST_USERS lists the users sorted by name (docs/PROTOCOL.md): got \(names.prefix(10))")
            },
            .server(
                endpoint, "list-content",
                proves:
                    """
                    LIST_CONTENT answers 1, 2, 3 as the table says, and 0 with the owner's files and descriptions \
                    in publishing order
                    """
            ) { s in
                let (a, b) = (s.user("a"), s.user("b"))
                try await s.expect(.listContent(user: a, owner: b), 1, "LIST_CONTENT by an unknown user answers 1")
                try await s.register(a)
                try await s.expect(.listContent(user: a, owner: b), 2, "LIST_CONTENT by a user not connected answers 2")
                try await s.expect(.connect(user: a, port: "40000"), 0, "CONNECT of a registered user answers 0")
                try await s.expect(.listContent(user: a, owner: b), 3, "LIST_CONTENT of an unknown owner answers 3")
                try await s.connected(b, port: 40_001)
                let files = [
                    ("zeta.txt", "last letter first"), ("alpha.pdf", "a description with spaces"), ("m.bin", "x"),
                ]
                for (file, description) in files {
                    try await s.expect(
                        .publish(user: b, fileName: file, description: description), 0,
                        "PUBLISH of a new file answers 0")
                }
                guard case .content(let listed) = try await s.send(.listContent(user: a, owner: b)).reply else {
                    throw CheckFailed("LIST_CONTENT of a known owner answers 0 with the list")
                }
                let got = listed.map { "\($0.name) \"\($0.description)\"" }
                let expected = files.map { "\($0.0) \"\($0.1)\"" }
                try require(
                    got == expected,
                    """
                    LIST_CONTENT lists the files with their descriptions in publishing order: expected \
                    \(expected), got \(got)
                    """
                )
            },
            .server(
                endpoint, "peer-address",
                proves: "CONNECT records the address the server sees for the connection, which LIST_USERS gives"
            ) { s in
                let name = s.user("a")
                try await s.register(name)
                let (reply, _, localIP) = try await s.send(.connect(user: name, port: "40000"))
                try require(reply.code == 0, "CONNECT of a registered user answers 0, got \(reply.code.rawValue)")
                guard case .users(let users) = try await s.send(.listUsers(user: name)).reply,
                    let entry = users.first(where: { $0.name == name })
                else { throw CheckFailed("LIST_USERS by a connected user lists it") }
                guard let localIP else { throw CheckSkipped("this side's address is unknown") }
                try require(
                    entry.ip == localIP,
                    """
                    CONNECT records the address of the connection: this side connected from \(localIP), the \
                    server lists \(entry.ip)
                    """
                )
            },
            .server(
                endpoint, "split-request",
                proves: "a request that arrives one byte at a time is answered as if it came whole"
            ) { s in
                let name = s.user("a")
                let (reply, _, _) = try await s.send(.register(user: name), chunkSize: 1, pause: .milliseconds(2))
                s.context.atEnd { _ = try? await s.code(.unregister(user: name)) }
                try require(reply.code == 0, "REGISTER sent a byte at a time answers 0, got \(reply.code.rawValue)")
                try await s.expect(
                    .unregister(user: name), 0,
                    "the REGISTER sent a byte at a time took effect (UNREGISTER finds the user)")
            },
            .server(
                endpoint, "silent-client",
                proves: "a client that connects and sends nothing does not keep others from being served"
            ) { s in
                let silent = Task {
                    try await Wire.exchange([], with: s.endpoint, holdOpen: .seconds(3), timeout: .seconds(4))
                }
                defer { silent.cancel() }
                try await Task.sleep(for: .milliseconds(200))
                let name = s.user("a")
                let started = ContinuousClock.now
                try await s.register(name)
                let took = ContinuousClock.now - started
                try require(
                    took < .seconds(2), "another client is served while one sends nothing: REGISTER took \(took)")
            },
            .server(
                endpoint, "concurrent-register",
                proves: "30 clients registering one name at once: exactly one gets 0, the others 1"
            ) { s in
                let name = s.user("same")
                s.context.atEnd { _ = try? await s.code(.unregister(user: name)) }
                let codes = try await withThrowingTaskGroup(of: ResultCode.self) { group in
                    for _ in 0..<30 { group.addTask { try await s.code(.register(user: name)) } }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                let zeros = codes.filter { $0 == 0 }.count
                let ones = codes.filter { $0 == 1 }.count
                try require(
                    zeros == 1 && ones == 29,
                    "one REGISTER of a name wins: got \(zeros) answered 0 and \(ones) answered 1 of 30")
            },
            .server(
                endpoint, "concurrent-publish",
                proves: "30 files published at once by one user: every PUBLISH answers 0 and LIST_CONTENT lists all 30"
            ) { s in
                let name = s.user("a")
                try await s.connected(name)
                let names = (0..<30).map { "file-\($0).txt" }
                let codes = try await withThrowingTaskGroup(of: ResultCode.self) { group in
                    for file in names {
                        group.addTask { try await s.code(.publish(user: name, fileName: file, description: "d")) }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                try require(
                    codes.allSatisfy { $0 == 0 }, "every PUBLISH of a new file answers 0: got \(codes.map(\.rawValue))")
                guard case .content(let files) = try await s.send(.listContent(user: name, owner: name)).reply else {
                    throw CheckFailed("LIST_CONTENT answers 0 with the list")
                }
                let missing = Set(names).subtracting(files.map(\.name))
                try require(
                    missing.isEmpty,
                    "nothing answered 0 is lost: \(missing.count) of 30 files missing from LIST_CONTENT")
            },
            .server(
                endpoint, "unknown-operation",
                proves: "an unknown operation changes nothing and the server goes on serving"
            ) { s in
                let bytes = Array("FETCH\u{0}\(DirectoryUnderTest.dateTime)\u{0}x\u{0}".utf8)
                let result = try await Wire.exchange(bytes, with: s.endpoint, context: s.context)
                try require(
                    !(result.received.first == UInt8(ascii: "0") || result.received.first == 0),
                    "an unknown operation is not answered 0")
                try await s.register(s.user("after"))
            },
            .server(
                endpoint, "oversized-field",
                proves:
                    """
                    a field over 255 bytes, in each of the eight operations, is answered that operation's error \
                    code (or closed), and the server goes on serving
                    """
            ) { s in
                let long = s.prefix + String(repeating: "x", count: 300)
                let user = s.user("a")
                let requests: [(String, [String])] = [
                    ("REGISTER", [long]), ("UNREGISTER", [long]), ("CONNECT", [long, "40000"]), ("DISCONNECT", [long]),
                    ("PUBLISH", [user, "f.txt", long]), ("DELETE", [user, long]), ("LIST_USERS", [long]),
                    ("LIST_CONTENT", [user, long]),
                ]
                // Each operation's "other error" code: REGISTER 2, CONNECT 3, PUBLISH 4, ...
                for (operation, fields) in requests {
                    let result = try await Wire.exchange(
                        DirectoryUnderTest.bytesUnchecked([operation] + fields), with: s.endpoint, context: s.context)
                    guard let first = result.received.first else { continue }  // closed: allowed
                    let code = first >= UInt8(ascii: "0") ? first - UInt8(ascii: "0") : first
                    let other = DirectoryOperation(rawValue: operation)!.otherErrorCode.rawValue
                    try require(
                        code == other,
                        """
                        \(operation) with a 300-byte field is answered its error code \(other) (or closed), got \
                        \(code)
                        """
                    )
                }
                try await s.register(s.user("after"))
            },
        ]
    }
}

extension DirectoryUnderTest {
    /// A request's bytes without the encoder's limits (for fields it would refuse).
    static func bytesUnchecked(_ fields: [String]) -> [UInt8] {
        var bytes = Array(fields[0].utf8) + [0] + Array(dateTime.utf8) + [0]
        for field in fields.dropFirst() { bytes += Array(field.utf8) + [0] }
        return bytes
    }
}
