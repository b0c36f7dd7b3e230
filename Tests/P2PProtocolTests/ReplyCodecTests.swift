import Foundation
import NIOCore
import P2PProtocol
import Testing

@Suite struct ReplyCodecTests {
    static let replies: [(DirectoryOperation, Reply)] = [
        (.register, .status(0)),
        (.register, .status(1)),
        (.publish, .status(4)),
        (.listUsers, .status(2)),
        (.listUsers, .users([])),
        (
            .listUsers,
            .users([
                ConnectedUser(name: "alice", ip: "127.0.0.1", port: "4000"),
                ConnectedUser(name: "bob", ip: "10.0.0.2", port: "65535"),
            ])
        ),
        (.listContent, .content([])),
        (.listContent, .content([PublishedFile(name: "a.txt", description: "with spaces here")])),
        (.listContent, .status(3)),
        (.search, .status(3)),
        (.search, .hits([])),
        (
            .search,
            .hits([
                SearchHit(owner: "alice", name: "lecture-notes.pdf", description: "week 1"),
                SearchHit(owner: "bob", name: "naïve.txt", description: ""),
            ])
        ),
    ]

    @Test(arguments: ResultCodeEncoding.allCases)
    func roundTripsInEveryEncoding(_ encoding: ResultCodeEncoding) throws {
        for (operation, reply) in Self.replies {
            var buffer = ByteBuffer()
            try ReplyEncoder(codeEncoding: encoding).encode(reply, into: &buffer)
            var decoder = ReplyDecoder(operation: operation)
            #expect(try decoder.decode(&buffer) == reply, "\(operation) \(reply) \(encoding)")
        }
    }

    @Test func codeEncodingsOnTheWire() throws {
        var ascii = ByteBuffer()
        try ReplyEncoder(codeEncoding: .ascii).encode(.status(0), into: &ascii)
        #expect(Array(ascii.readableBytesView) == [0x30, 0x00])
        var raw = ByteBuffer()
        try ReplyEncoder(codeEncoding: .byte).encode(.status(3), into: &raw)
        #expect(Array(raw.readableBytesView) == [0x03])
        var list = ByteBuffer()
        try ReplyEncoder().encode(.users([ConnectedUser(name: "a", ip: "1.2.3.4", port: "5")]), into: &list)
        #expect(Array(list.readableBytesView) == Array("0\01\0a\01.2.3.4\05\0".utf8))
    }

    @Test func acceptsALoneDigitCode() throws {
        var buffer = ByteBuffer(bytes: [UInt8(ascii: "1")])
        var decoder = ReplyDecoder(operation: .register)
        #expect(try decoder.decode(&buffer) == .status(1))
    }

    @Test func listAfterALoneDigitCode() throws {
        // "0" with no NUL, then the count and entries.
        var buffer = ByteBuffer(bytes: Array("01\0f\0d\0".utf8))
        var decoder = ReplyDecoder(operation: .listContent)
        #expect(try decoder.decode(&buffer) == .content([PublishedFile(name: "f", description: "d")]))
    }

    @Test(arguments: ResultCodeEncoding.allCases)
    func listDecodesWhenFedOneByteAtATime(_ encoding: ResultCodeEncoding) throws {
        let reply = Reply.users([
            ConnectedUser(name: "alice", ip: "127.0.0.1", port: "4000"),
            ConnectedUser(name: "bob", ip: "127.0.0.2", port: "4001"),
        ])
        var buffer = ByteBuffer()
        try ReplyEncoder(codeEncoding: encoding).encode(reply, into: &buffer)
        let bytes = Array(buffer.readableBytesView)
        var decoder = ReplyDecoder(operation: .listUsers)
        var result: Reply?
        for byte in bytes {
            #expect(result == nil)
            var chunk = ByteBuffer(bytes: [byte])
            result = try decoder.decode(&chunk)
        }
        #expect(result == reply)
    }

    @Test func rejectsAnInvalidCodeByte() {
        var buffer = ByteBuffer(bytes: [UInt8(ascii: "X")])
        var decoder = ReplyDecoder(operation: .register)
        #expect(throws: ProtocolError.invalidResultCode(UInt8(ascii: "X"))) { try decoder.decode(&buffer) }
    }

    @Test func rejectsAnInvalidCount() {
        var buffer = ByteBuffer(bytes: Array("0\0many\0".utf8))
        var decoder = ReplyDecoder(operation: .listUsers)
        #expect(throws: ProtocolError.invalidCount("many")) { try decoder.decode(&buffer) }
    }

    @Test func truncatedListIsIncomplete() throws {
        var buffer = ByteBuffer(bytes: Array("0\02\0a\0".utf8))
        var decoder = ReplyDecoder(operation: .listContent)
        #expect(try decoder.decode(&buffer) == nil)
        #expect(decoder.finish() == .truncated(operation: "LIST_CONTENT", fieldsReceived: 2))
    }

    @Test func resultCodeDecoderDropsALateTerminator() throws {
        var decoder = ResultCodeDecoder()
        var first = ByteBuffer(bytes: [UInt8(ascii: "0")])
        #expect(try decoder.decode(&first) == 0)
        #expect(!decoder.isSettled)
        var rest = ByteBuffer(bytes: [0, 0xAB])
        let settled = decoder.skipTerminator(&rest)
        #expect(settled)
        #expect(Array(rest.readableBytesView) == [0xAB], "the NUL after a digit belongs to the code")
    }

    @Test func rawZeroCodeHasNoTerminator() throws {
        var decoder = ResultCodeDecoder()
        var buffer = ByteBuffer(bytes: [0, 0, 0xAB])
        #expect(try decoder.decode(&buffer) == 0)
        #expect(decoder.isSettled)
        #expect(Array(buffer.readableBytesView) == [0, 0xAB], "a raw code is one byte; what follows is content")
    }
}

@Suite struct FileRequestTests {
    @Test func roundTripsByteByByte() throws {
        var buffer = ByteBuffer()
        try FileRequest(fileName: "authors.txt").encode(into: &buffer)
        #expect(Array(buffer.readableBytesView) == Array("GET_FILE\0authors.txt\0".utf8))
        var decoder = FileRequestDecoder()
        var result: FileRequest?
        for byte in buffer.readableBytesView {
            var chunk = ByteBuffer(bytes: [byte])
            result = try decoder.decode(&chunk)
        }
        #expect(result == FileRequest(fileName: "authors.txt"))
    }

    @Test func rejectsOtherOperations() {
        var buffer = ByteBuffer(bytes: Array("PUT_FILE\0x\0".utf8))
        var decoder = FileRequestDecoder()
        #expect(throws: ProtocolError.unknownOperation("PUT_FILE")) { try decoder.decode(&buffer) }
    }
}

@Suite struct DateTimeFormatTests {
    @Test func formatsAsDayMonthYearTime() throws {
        let date = Date(timeIntervalSince1970: 1_795_611_909)  // 2026-11-25 13:05:09 UTC
        let text = DateTimeFormat.string(from: date, timeZone: TimeZone(identifier: "UTC")!)
        #expect(text == "25/11/2026 13:05:09")
        #expect(DateTimeFormat.isValid(text))
    }

    @Test func validatesShape() {
        #expect(!DateTimeFormat.isValid("2026-11-25 13:05:09"))
        #expect(!DateTimeFormat.isValid("25/11/2026 13:05"))
        #expect(DateTimeFormat.isValid("01/01/1970 00:00:00"))
    }
}
