import NIOCore

/// Reads NUL-terminated fields out of a buffer, enforcing the field size limit.
///
/// Nothing is consumed until a whole field is there, so a caller can feed bytes as they arrive
/// (one at a time is fine) and call again.
struct FieldReader {
    /// Index of the next field, used in error reports.
    var fieldIndex = 0

    /// The next complete field, nil if its NUL has not arrived yet.
    mutating func readField(from buffer: inout ByteBuffer) throws(ProtocolError) -> String? {
        let view = buffer.readableBytesView
        guard let nul = view.firstIndex(of: 0) else {
            if view.count > ProtocolLimits.maxFieldBytes {
                throw .fieldTooLong(index: fieldIndex, length: view.count)
            }
            return nil
        }
        let length = nul - view.startIndex
        guard length <= ProtocolLimits.maxFieldBytes else {
            throw .fieldTooLong(index: fieldIndex, length: length)
        }
        guard let field = String(validating: view[view.startIndex..<nul], as: UTF8.self) else {
            throw .invalidUTF8(index: fieldIndex)
        }
        buffer.moveReaderIndex(forwardBy: length + 1)
        fieldIndex += 1
        return field
    }
}

extension ByteBuffer {
    /// Writes `fields` each followed by NUL, checking the protocol's limits first so that
    /// nothing is written when one of them is invalid.
    mutating func writeFields(_ fields: [String]) throws(ProtocolError) {
        for (index, field) in fields.enumerated() {
            let utf8 = field.utf8
            if utf8.count > ProtocolLimits.maxFieldBytes {
                throw .fieldTooLong(index: index, length: utf8.count)
            }
            if utf8.contains(0) { throw .fieldContainsNUL(index: index) }
        }
        for field in fields {
            writeString(field)
            writeInteger(UInt8(0))
        }
    }
}
