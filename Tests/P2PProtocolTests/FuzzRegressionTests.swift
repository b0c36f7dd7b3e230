import NIOCore
import P2PProtocol
import Testing

/// Inputs the fuzz targets (fuzz/) stopped on, kept as ordinary tests.
@Suite struct FuzzRegressionTests {
    /// fuzz-request, first run: a 300-byte field decided at once and byte by byte. Both refuse
    /// it as too long in the same field, but report the bytes seen so far (300 at once, 257
    /// byte by byte, where the limit is first passed): the decision is the same, the detail is
    /// not, and the fuzz target compares decisions.
    @Test func aFieldTooLongIsRefusedTheSameWhateverTheSplit() throws {
        let bytes =
            Array("REGISTER\u{0}03/12/2026 10:00:00\u{0}".utf8) + Array(repeating: UInt8(ascii: "a"), count: 300) + [0]
        var whole = RequestDecoder()
        var buffer = ByteBuffer(bytes: bytes)
        #expect(throws: ProtocolError.fieldTooLong(index: 2, length: 300)) { try whole.decode(&buffer) }

        var split = RequestDecoder()
        var failure: ProtocolError?
        for byte in bytes {
            var one = ByteBuffer(bytes: [byte])
            do {
                _ = try split.decode(&one)
            } catch {
                failure = error
                break
            }
        }
        #expect(failure == .fieldTooLong(index: 2, length: ProtocolLimits.maxFieldBytes + 1))
        // Either way the server answers REGISTER's "other error" code.
        #expect(whole.operation == .register && split.operation == .register)
    }
}
