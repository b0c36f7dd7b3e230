import NIOCore

/// Decodes one directory request from bytes that may arrive split anywhere.
///
/// Feed it every chunk with ``decode(_:)``: it returns nil while the request is incomplete
/// and the request once its last field has arrived. When the connection's input ends first,
/// ``finish()`` says what was missing. After an error the decoder is not to be used again.
public struct RequestDecoder: Sendable {
    private var reader = FieldReader()
    private var buffer = ByteBuffer()
    private var arguments: [String] = []
    /// A keyed request's proof fields (``RequestProof``), while they arrive; nil for a plain one.
    private var proofFields: [String]?

    /// The operation, once its name has arrived; the server uses it to pick the error code
    /// for a request that goes wrong later.
    public private(set) var operation: DirectoryOperation?

    public init() {}

    /// Consumes `bytes` and returns the request if it is now complete.
    /// Bytes after a complete request are left unread.
    public mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> Request? {
        buffer.writeBuffer(&bytes)
        while let field = try reader.readField(from: &buffer) {
            if reader.fieldIndex == 1, field == KeyedRequest.prefix {
                proofFields = []
                continue
            }
            if var proof = proofFields, proof.count < 3 {
                proof.append(field)
                proofFields = proof
                continue
            }
            guard let operation else {
                guard let operation = DirectoryOperation(rawValue: field) else { throw .unknownOperation(field) }
                if proofFields != nil, !operation.isKeyable {
                    throw .unknownOperation("\(KeyedRequest.prefix) \(field)")
                }
                self.operation = operation
                continue
            }
            arguments.append(field)
            if arguments.count == operation.argumentCount {
                var request = Request(operation: operation, arguments: arguments)
                if let proof = proofFields {
                    guard let counter = UInt64(proof[1]) else { throw .invalidCounter(proof[1]) }
                    request?.proof = RequestProof(session: proof[0], counter: counter, mac: proof[2])
                }
                return request
            }
        }
        return nil
    }

    /// Called when the input ended before a request was complete: the error describing it.
    public func finish() -> ProtocolError {
        .truncated(operation: operation?.rawValue, fieldsReceived: reader.fieldIndex)
    }
}

/// Encodes requests for the client.
public enum RequestEncoder {
    /// Writes the request; throws, writing nothing, when a field is over the limit or holds NUL.
    public static func encode(_ request: Request, into buffer: inout ByteBuffer) throws(ProtocolError) {
        if let proof = request.proof {
            try buffer.writeFields([KeyedRequest.prefix, proof.session, String(proof.counter), proof.mac])
        }
        try buffer.writeFields(request.fields)
    }
}
