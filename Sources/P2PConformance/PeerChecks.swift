import Crypto
import Foundation
import NIOCore
import P2PProtocol

/// What the file a peer serves must be: its bytes (a local copy) or its SHA-256.
public enum ExpectedFile: Sendable {
    case content([UInt8])
    case sha256(String)

    func matches(_ bytes: [UInt8]) -> Bool {
        switch self {
        case .content(let expected): return bytes == expected
        case .sha256(let digest): return Self.sha256(bytes) == digest.lowercased()
        }
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }
}

/// A peer under test: GET_FILE as other clients send it.
struct PeerUnderTest: Sendable {
    let endpoint: Endpoint
    let context: CheckContext
    let file: String
    let expected: ExpectedFile?

    /// The result code and the file's bytes (any framing the known peers use).
    func get(_ name: String, chunkSize: Int? = nil, pause: Duration = .zero, timeout: Duration = .seconds(60))
        async throws -> (code: ResultCode, content: [UInt8])
    {
        let request = Array("GET_FILE".utf8) + [0] + Array(name.utf8) + [0]
        let result = try await Wire.exchange(
            request, with: endpoint, chunkSize: chunkSize, pauseBetweenChunks: pause, timeout: timeout, context: nil)
        // Only the start of a file goes into the report.
        context.record(Exchange(sent: request, received: Array(result.received.prefix(64)), ending: result.ending))
        var decoder = FileReplyDecoder()
        var buffer = ByteBuffer(bytes: result.received)
        var content = ByteBuffer()
        do {
            let status = try decoder.decode(&buffer, into: &content)
            switch status {
            case .refused(let code): return (code, [])
            case .complete: return (0, Array(content.readableBytesView))
            case .needMore:
                try decoder.finish(into: &content)
                return (0, Array(content.readableBytesView))
            }
        } catch .noReply {
            throw CheckFailed("no reply to GET_FILE \(name) (\(result.ending))")
        } catch {
            throw CheckFailed("unreadable reply to GET_FILE \(name): \(error)")
        }
    }

    func expectServed(_ content: [UInt8], _ how: String) throws {
        guard let expected else { return }
        try require(
            expected.matches(content),
            """
            \(how): the bytes received (\(content.count), SHA-256 \(ExpectedFile.sha256(content).prefix(16))…) \
            are not the file's
            """
        )
    }
}

extension Check {
    static func peer(
        _ target: (Endpoint, String, ExpectedFile?), _ name: String, quick: Bool = false, proves: String,
        _ body: @escaping @Sendable (PeerUnderTest) async throws -> Void
    ) -> Check {
        Check("peer.\(name)", quick: quick, proves: proves) { context in
            try await body(PeerUnderTest(endpoint: target.0, context: context, file: target.1, expected: target.2))
        }
    }
}

/// The rules of GET_FILE, from a downloader's side.
public enum PeerChecks {
    static func all(_ endpoint: Endpoint, file: String, expected: ExpectedFile?) -> [Check] {
        let target = (endpoint, file, expected)
        return [
            .peer(
                target, "get-file", quick: true,
                proves:
                    """
                    GET_FILE of the named file answers 0 and its exact bytes (checked against the local copy or \
                    SHA-256)
                    """
            ) { p in
                let (code, content) = try await p.get(p.file)
                try require(code == 0, "GET_FILE of a file it serves answers 0, got \(code.rawValue)")
                try p.expectServed(content, "GET_FILE \(p.file)")
                if p.expected == nil {
                    p.context.note("\(content.count) bytes; give --sha256 or --local-copy to check them")
                }
            },
            .peer(
                target, "missing-file", quick: true,
                proves: "GET_FILE of a file that does not exist answers 1 and nothing else"
            ) { p in
                let name = "no-such-file-\(UInt32.random(in: 0...UInt32.max)).txt"
                let (code, _) = try await p.get(name)
                try require(
                    code == 1, "GET_FILE of a file that does not exist answers 1 (FILE NOT EXIST), got \(code.rawValue)"
                )
            },
            .peer(target, "parent-path", proves: "a name climbing out with .. is refused, never served") { p in
                let (code, content) = try await p.get("../../../../../../../../etc/passwd")
                try require(
                    code != 0, "GET_FILE of ../../etc/passwd is refused, but it answered 0 with \(content.count) bytes")
            },
            .peer(
                target, "absolute-path", proves: "an absolute path to a file never published is refused, never served"
            ) { p in
                let (code, content) = try await p.get("/etc/passwd")
                try require(
                    code != 0, "GET_FILE of /etc/passwd is refused, but it answered 0 with \(content.count) bytes")
            },
            .peer(
                target, "slow-request",
                proves: "a GET_FILE request arriving a byte at a time is served as if it came whole"
            ) { p in
                let (code, content) = try await p.get(p.file, chunkSize: 1, pause: .milliseconds(20))
                try require(code == 0, "GET_FILE sent a byte at a time answers 0, got \(code.rawValue)")
                try p.expectServed(content, "GET_FILE sent a byte at a time")
            },
            .peer(target, "parallel", proves: "four downloads of the file at once all get the whole file") { p in
                let results = try await withThrowingTaskGroup(of: (ResultCode, [UInt8]).self) { group in
                    for _ in 0..<4 { group.addTask { try await p.get(p.file) } }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                try require(
                    results.allSatisfy { $0.0 == 0 },
                    "every one of four GET_FILEs at once answers 0: got \(results.map { $0.0.rawValue })")
                for (_, content) in results { try p.expectServed(content, "one of four GET_FILEs at once") }
                try require(Set(results.map { $0.1 }).count == 1, "four downloads at once get the same bytes")
            },
        ]
    }
}
