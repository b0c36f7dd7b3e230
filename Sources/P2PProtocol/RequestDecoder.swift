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

    /// The operation, once its name has arrived; the server uses it to pick the error code
    /// for a request that goes wrong later.
    public private(set) var operation: DirectoryOperation?

    public init() {}

    /// Consumes `bytes` and returns the request if it is now complete.
    /// Bytes after a complete request are left unread.
    public mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> Request? {
        buffer.writeBuffer(&bytes)
        while let field = try reader.readField(from: &buffer) {
            guard let operation else {
                guard let operation = DirectoryOperation(rawValue: field) else { throw .unknownOperation(field) }
                self.operation = operation
                continue
            }
            arguments.append(field)
            if arguments.count == operation.argumentCount {
                return Request(operation: operation, arguments: arguments)
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
        try buffer.writeFields(request.fields)
    }
}
