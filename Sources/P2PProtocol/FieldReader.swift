import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

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
        var bytes = 0
        for (index, field) in fields.enumerated() { bytes += try Self.checkedFieldLength(field, index: index) + 1 }
        reserveCapacity(minimumWritableBytes: bytes)
        for field in fields { writeCheckedField(field) }
    }

    /// The length of `field` in bytes, once it is known to fit the protocol: at most
    /// ``ProtocolLimits/maxFieldBytes`` and no NUL (which would end it early).
    static func checkedFieldLength(_ field: String, index: Int) throws(ProtocolError) -> Int {
        let utf8 = field.utf8
        let length = utf8.count
        if length > ProtocolLimits.maxFieldBytes { throw .fieldTooLong(index: index, length: length) }
        // Replies of thousands of fields check every byte: memchr over the string's storage
        // when it is contiguous (a native string always is).
        let hasNUL =
            utf8.withContiguousStorageIfAvailable { bytes in
                guard let base = bytes.baseAddress else { return false }
                return memchr(base, 0, bytes.count) != nil
            } ?? utf8.contains(0)
        if hasNUL { throw .fieldContainsNUL(index: index) }
        return length
    }

    /// Writes `field` and its NUL; `field` must have passed ``checkedFieldLength(_:index:)``.
    mutating func writeCheckedField(_ field: String) {
        writeString(field)
        writeInteger(UInt8(0))
    }
}
