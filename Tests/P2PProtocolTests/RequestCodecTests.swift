import NIOCore
import P2PProtocol
import Testing

let dateTime = "25/11/2026 13:05:09"

/// One request of every kind, with arguments that exercise spaces and UTF-8.
let sampleRequests: [Request] = [
    .init(dateTime: dateTime, command: .register(user: "alice")),
    .init(dateTime: dateTime, command: .unregister(user: "bob")),
    .init(dateTime: dateTime, command: .connect(user: "zoë", port: "4242")),
    .init(dateTime: dateTime, command: .disconnect(user: "alice")),
    .init(dateTime: dateTime, command: .publish(user: "alice", fileName: "notes.txt", description: "my notes, v2")),
    .init(dateTime: dateTime, command: .delete(user: "alice", fileName: "notes.txt")),
    .init(dateTime: dateTime, command: .listUsers(user: "alice")),
    .init(dateTime: dateTime, command: .listContent(user: "alice", owner: "bob")),
    .init(dateTime: dateTime, command: .search(user: "bob", query: "lect naïve  notes")),
]

func encoded(_ request: Request) throws -> ByteBuffer {
    var buffer = ByteBuffer()
    try RequestEncoder.encode(request, into: &buffer)
    return buffer
}

func wire(_ fields: [String]) -> ByteBuffer {
    ByteBuffer(bytes: fields.flatMap { Array($0.utf8) + [0] })
}

@Suite struct RequestCodecTests {
    @Test(arguments: sampleRequests)
    func roundTrip(_ request: Request) throws {
        var buffer = try encoded(request)
        var decoder = RequestDecoder()
        #expect(try decoder.decode(&buffer) == request)
        #expect(buffer.readableBytes == 0)
    }

    @Test func encodingIsNULTerminatedFieldsInSpecOrder() throws {
        let request = Request(
            dateTime: dateTime, command: .publish(user: "alice", fileName: "f.txt", description: "a b"))
        let bytes = Array(try encoded(request).readableBytesView)
        #expect(bytes == Array("PUBLISH\0\(dateTime)\0alice\0f.txt\0a b\0".utf8))
    }

    @Test(arguments: sampleRequests)
    func decodesWhenFedOneByteAtATime(_ request: Request) throws {
        let bytes = Array(try encoded(request).readableBytesView)
        var decoder = RequestDecoder()
        for (index, byte) in bytes.enumerated() {
            var chunk = ByteBuffer(bytes: [byte])
            let result = try decoder.decode(&chunk)
            if index < bytes.count - 1 {
                #expect(result == nil, "complete after only \(index + 1) of \(bytes.count) bytes")
            } else {
                #expect(result == request)
            }
        }
    }

    @Test func operationIsKnownAsSoonAsItsFieldArrives() throws {
        var decoder = RequestDecoder()
        var buffer = ByteBuffer(string: "CONNECT\0\(dateTime)")
        #expect(try decoder.decode(&buffer) == nil)
        #expect(decoder.operation == .connect)
        #expect(decoder.finish() == .truncated(operation: "CONNECT", fieldsReceived: 1))
    }

    @Test func fieldOf255BytesIsAccepted() throws {
        let user = String(repeating: "u", count: 255)
        var buffer = wire(["REGISTER", dateTime, user])
        var decoder = RequestDecoder()
        #expect(try decoder.decode(&buffer) == Request(dateTime: dateTime, command: .register(user: user)))
    }

    @Test func fieldOver255BytesIsRejectedWithoutWaitingForItsNUL() throws {
        var decoder = RequestDecoder()
        var buffer = ByteBuffer(
            bytes: Array("REGISTER\0\(dateTime)\0".utf8) + Array(repeating: UInt8(ascii: "x"), count: 256))
        #expect(throws: ProtocolError.fieldTooLong(index: 2, length: 256)) { try decoder.decode(&buffer) }
    }

    @Test func fieldOver255BytesWithNULIsRejected() throws {
        var decoder = RequestDecoder()
        var buffer = wire(["REGISTER", dateTime, String(repeating: "x", count: 300)])
        #expect(throws: ProtocolError.fieldTooLong(index: 2, length: 300)) { try decoder.decode(&buffer) }
    }

    @Test func unknownOperationIsRejected() throws {
        var decoder = RequestDecoder()
        var buffer = wire(["FROBNICATE", dateTime])
        #expect(throws: ProtocolError.unknownOperation("FROBNICATE")) { try decoder.decode(&buffer) }
    }

    @Test func operationNamesAreCaseSensitive() throws {
        var decoder = RequestDecoder()
        var buffer = wire(["register", dateTime, "alice"])
        #expect(throws: ProtocolError.unknownOperation("register")) { try decoder.decode(&buffer) }
    }

    @Test func invalidUTF8IsRejected() throws {
        var decoder = RequestDecoder()
        var buffer = ByteBuffer(bytes: Array("REGISTER\0\(dateTime)\0".utf8) + [0xC3, 0x28, 0])
        #expect(throws: ProtocolError.invalidUTF8(index: 2)) { try decoder.decode(&buffer) }
    }

    @Test func garbageWithoutNULIsRejectedOnceOverTheLimit() throws {
        var decoder = RequestDecoder()
        var buffer = ByteBuffer(bytes: (0..<1000).map { UInt8(1 + $0 % 200) })
        #expect(throws: ProtocolError.fieldTooLong(index: 0, length: 1000)) { try decoder.decode(&buffer) }
    }

    @Test func endOfInputBeforeAnyFieldIsTruncated() {
        #expect(RequestDecoder().finish() == .truncated(operation: nil, fieldsReceived: 0))
    }

    @Test func bytesAfterACompleteRequestAreLeftUnread() throws {
        var buffer = wire(["LIST_USERS", dateTime, "alice", "extra"])
        var decoder = RequestDecoder()
        #expect(try decoder.decode(&buffer) == Request(dateTime: dateTime, command: .listUsers(user: "alice")))
    }

    @Test func encoderRefusesOversizedAndNULFields() {
        var buffer = ByteBuffer()
        let long = Request(dateTime: dateTime, command: .register(user: String(repeating: "a", count: 256)))
        #expect(throws: ProtocolError.fieldTooLong(index: 2, length: 256)) {
            try RequestEncoder.encode(long, into: &buffer)
        }
        let nul = Request(dateTime: dateTime, command: .register(user: "a\0b"))
        #expect(throws: ProtocolError.fieldContainsNUL(index: 2)) { try RequestEncoder.encode(nul, into: &buffer) }
        #expect(buffer.readableBytes == 0, "nothing is written when a field is invalid")
    }

    @Test func otherErrorCodesFollowTheSpec() {
        let expected: [DirectoryOperation: UInt8] = [
            .register: 2, .unregister: 2, .connect: 3, .disconnect: 3,
            .publish: 4, .delete: 4, .listUsers: 3, .listContent: 4, .search: 3, .control: 3, .rendezvous: 3, .relay: 3,
            .identify: 3,
        ]
        for operation in DirectoryOperation.allCases {
            #expect(operation.otherErrorCode.rawValue == expected[operation])
        }
    }
}
