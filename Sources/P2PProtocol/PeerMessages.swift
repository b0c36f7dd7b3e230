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

/// Names inside one folder that no real file has, used by our programs to talk to a peer in
/// a way every peer of the protocol already answers (FILE NOT EXIST from a third-party peer).
/// The folder is an absolute path that does not exist, so the lookup fails with "no such file"
/// whether a peer joins the name to its own folder or opens it as given.
public enum ReservedFileName {
    /// The folder holding every reserved name.
    public static let folder = "/.p2p-reserved/"

    /// The directory server's peer check (docs/PROTOCOL.md, "Peer checks").
    public static let peerCheck = folder + "peer-check"

    /// The owner name our client asks LIST_CONTENT for to learn what the server speaks beyond
    /// the spec (``ServerCapabilities``).
    public static let capabilities = folder + "v1/capabilities"

    /// Whether `name` is one of the reserved names (answered quietly by our peers).
    public static func isReserved(_ name: String) -> Bool {
        name.hasPrefix(folder)
    }
}
