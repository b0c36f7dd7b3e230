import NIOCore

/// The peer-to-peer request: `"GET_FILE"` `"<file name>"` (PROTOCOL.md section 4).
public struct FileRequest: Sendable, Hashable {
    public static let operationName = "GET_FILE"

    public var fileName: String

    public init(fileName: String) {
        self.fileName = fileName
    }

    public func encode(into buffer: inout ByteBuffer) throws(ProtocolError) {
        try buffer.writeFields([Self.operationName, fileName])
    }
}

/// The serving peer's result codes for GET_FILE.
public enum FileReplyCode {
    public static let ok: ResultCode = 0
    public static let noSuchFile: ResultCode = 1
    public static let otherError: ResultCode = 2
}

/// Decodes a GET_FILE request on the serving peer.
public struct FileRequestDecoder: Sendable {
    private var reader = FieldReader()
    private var buffer = ByteBuffer()
    private var sawOperation = false

    public init() {}

    public mutating func decode(_ bytes: inout ByteBuffer) throws(ProtocolError) -> FileRequest? {
        buffer.writeBuffer(&bytes)
        while let field = try reader.readField(from: &buffer) {
            if !sawOperation {
                guard field == FileRequest.operationName else { throw .unknownOperation(field) }
                sawOperation = true
            } else {
                return FileRequest(fileName: field)
            }
        }
        return nil
    }

    public func finish() -> ProtocolError {
        .truncated(operation: sawOperation ? FileRequest.operationName : nil, fieldsReceived: reader.fieldIndex)
    }
}
