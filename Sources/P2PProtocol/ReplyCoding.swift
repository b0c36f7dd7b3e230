import NIOCore

/// Encodes the server's replies.
public struct ReplyEncoder: Sendable {
    public var codeEncoding: ResultCodeEncoding

    public init(codeEncoding: ResultCodeEncoding = .ascii) {
        self.codeEncoding = codeEncoding
    }

    public func encode(_ reply: Reply, into buffer: inout ByteBuffer) throws(ProtocolError) {
        writeCode(reply.code, into: &buffer)
        switch reply {
        case .status:
            break
        case .users(let users):
            try Self.writeRecords(users, into: &buffer) { ($0.name, $0.ip, $0.port) }
        case .content(let files):
            try Self.writeRecords(files, into: &buffer) { ($0.name, $0.description) }
        case .hits(let hits):
            try Self.writeRecords(hits, into: &buffer) { ($0.owner, $0.name, $0.description) }
        }
    }

    /// Writes the count of `records` and then each record's fields (`fields` gives them as a
    /// tuple of strings), with one capacity reservation for the whole list: a LIST_USERS of a
    /// large directory is hundreds of thousands of fields.
    private static func writeRecords<Record, each Field: StringProtocol>(
        _ records: [Record], into buffer: inout ByteBuffer, fields: (Record) -> (repeat each Field)
    ) throws(ProtocolError) {
        let count = String(records.count)
        var bytes = count.utf8.count + 1
        var index = 1
        for record in records {
            for field in repeat each fields(record) {
                bytes += try ByteBuffer.checkedFieldLength(String(field), index: index) + 1
                index += 1
            }
        }
        buffer.reserveCapacity(minimumWritableBytes: bytes)
        buffer.writeCheckedField(count)
        for record in records {
            for field in repeat each fields(record) { buffer.writeCheckedField(String(field)) }
        }
    }

    public func writeCode(_ code: ResultCode, into buffer: inout ByteBuffer) {
        switch codeEncoding {
        case .ascii:
            buffer.writeInteger(UInt8(ascii: "0") + code.rawValue)
            buffer.writeInteger(UInt8(0))
        case .byte:
            buffer.writeInteger(code.rawValue)
        }
    }
}

/// Reads a result code in any of the three forms of PROTOCOL.md section 3: `30 00`, a lone
/// `30`, or a raw `00`.
public struct ResultCodeDecoder: Sendable {
    private enum State: Sendable {
        case waitingForCode
        /// An ASCII digit was read; a NUL right after it belongs to the code.
        case digitRead(ResultCode)
        case done(ResultCode)
    }

    private var state = State.waitingForCode

    public init() {}

    /// The code as soon as it is known, consuming a trailing NUL when one is already there.
    ///
    /// Because a lone digit is legal, the code is returned without waiting for a NUL: call
    /// ``skipTerminator(_:)`` before reading what follows to drop a NUL that arrives later.
    public mutating func decode(_ buffer: inout ByteBuffer) throws(ProtocolError) -> ResultCode? {
        switch state {
        case .done(let code), .digitRead(let code):
            return code
        case .waitingForCode:
            guard let byte = buffer.readInteger(as: UInt8.self) else { return nil }
            if let code = ResultCode(rawValue: byte) {
                state = .done(code)
                return code
            }
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { throw .invalidResultCode(byte) }
            let code = ResultCode(rawValue: byte - UInt8(ascii: "0"))!
            state = .digitRead(code)
            skipTerminator(&buffer)
            return code
        }
    }

    /// Whether the code's form is settled: false while a digit code might still be followed
    /// by its NUL.
    public var isSettled: Bool {
        if case .done = state { return true }
        return false
    }

    /// Drops the NUL that terminates a digit code if it is the next byte.
    /// Returns false when it cannot tell yet (no byte available after a digit).
    @discardableResult
    public mutating func skipTerminator(_ buffer: inout ByteBuffer) -> Bool {
        guard case .digitRead(let code) = state else { return true }
        guard let next = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return false }
        if next == 0 { buffer.moveReaderIndex(forwardBy: 1) }
        state = .done(code)
        return true
    }
}

/// Decodes the directory server's reply to one operation, fed in chunks as they arrive.
public struct ReplyDecoder: Sendable {
    public let operation: DirectoryOperation
    private var codeDecoder = ResultCodeDecoder()
    private var reader = FieldReader()
    private var buffer = ByteBuffer()
    private var count: Int?
    private var fields: [String] = []

    public init(operation: DirectoryOperation) {
        self.operation = operation
    }

    /// Returns the reply once complete, nil while more bytes are needed.
    public mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> Reply? {
        buffer.writeBuffer(&bytes)
        guard let code = try codeDecoder.decode(&buffer) else { return nil }
        guard operation.repliesWithList, code == .ok else { return .status(code) }
        guard codeDecoder.skipTerminator(&buffer) else { return nil }
        if count == nil {
            guard let text = try reader.readField(from: &buffer) else { return nil }
            guard let value = Int(text), value >= 0, value <= ProtocolLimits.maxListEntries else {
                throw .invalidCount(text)
            }
            count = value
        }
        let perEntry = operation == .listContent ? 2 : 3
        let needed = count! * perEntry
        while fields.count < needed, let field = try reader.readField(from: &buffer) {
            fields.append(field)
        }
        guard fields.count == needed else { return nil }
        if operation == .search {
            return .hits(
                stride(from: 0, to: needed, by: 3).map {
                    SearchHit(owner: fields[$0], name: fields[$0 + 1], description: fields[$0 + 2])
                })
        }
        if operation == .listUsers {
            return .users(
                stride(from: 0, to: needed, by: 3).map {
                    ConnectedUser(name: fields[$0], ip: fields[$0 + 1], port: fields[$0 + 2])
                })
        }
        return .content(
            stride(from: 0, to: needed, by: 2).map { PublishedFile(name: fields[$0], description: fields[$0 + 1]) })
    }

    /// Called when the server closed the connection before the reply was complete.
    public func finish() -> ProtocolError {
        .truncated(operation: operation.rawValue, fieldsReceived: reader.fieldIndex)
    }
}
