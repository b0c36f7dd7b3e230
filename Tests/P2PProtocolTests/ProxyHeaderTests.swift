import NIOCore
import P2PProtocol
import Testing

@Suite struct ProxyHeaderTests {
    /// Decodes `bytes` fed `step` bytes at a time: the header, and what follows it.
    func decode(_ bytes: [UInt8], step: Int? = nil) throws(ProxyHeaderError) -> (ProxyHeader, [UInt8])? {
        let decoder = ProxyHeaderDecoder()
        var buffer = ByteBuffer()
        var offset = 0
        let chunk = step ?? bytes.count
        while offset < bytes.count {
            let end = min(bytes.count, offset + chunk)
            buffer.writeBytes(bytes[offset..<end])
            offset = end
            if let header = try decoder.decode(&buffer) {
                let rest = Array(buffer.readableBytesView) + bytes[offset...]
                return (header, rest)
            }
        }
        return nil
    }

    let request = Array("REGISTER\u{0}01/01/2026 10:00:00\u{0}alice\u{0}".utf8)

    static func v2(command: UInt8 = 0x21, family: UInt8, block: [UInt8]) -> [UInt8] {
        [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, command, family,
            UInt8(block.count >> 8), UInt8(block.count & 0xFF),
        ] + block
    }

    @Test func versionOneGivesTheClientAndLeavesTheRequest() throws {
        let header = Array("PROXY TCP4 192.0.2.7 10.0.0.1 51234 4242\r\n".utf8)
        for step in [nil, 1, 7] {
            let (decoded, rest) = try #require(try decode(header + request, step: step))
            #expect(decoded.source?.ip == "192.0.2.7" && decoded.source?.port == 51234)
            #expect(rest == request)
        }
        let six = try #require(try decode(Array("PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 40000 4242\r\n".utf8)))
        #expect(six.0.source?.ip == "2001:db8::1")
        let unknown = try #require(try decode(Array("PROXY UNKNOWN ff ee\r\n".utf8) + request))
        #expect(unknown.0.source == nil && unknown.1 == request)
    }

    @Test func versionOneIncompleteWaits() throws {
        #expect(try decode(Array("PROXY TCP4 192.0.2.7 10.0.0.1 51234".utf8)) == nil)
        #expect(try decode(Array("PRO".utf8)) == nil)
    }

    @Test func versionOneBadHeadersAreRefused() {
        let cases: [(String, ProxyHeaderError)] = [
            ("PROXY TCP4 192.0.2.7 10.0.0.1 51234 4242\n", .malformed("line not ended by CRLF")),
            ("PROXY TCP4 999.0.2.7 10.0.0.1 51234 4242\r\n", .malformed("bad address")),
            ("PROXY TCP4 ::1 10.0.0.1 51234 4242\r\n", .malformed("bad address")),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 65536 4242\r\n", .malformed("bad port")),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 051 4242\r\n", .malformed("bad port")),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n", .malformed("5 fields")),
            ("PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", .malformed("unknown protocol UDP4")),
            ("PROXY TCP4 " + String(repeating: "1", count: 100) + "\r\n", .tooLong),
            ("PROXYTCP4", .missing),
            ("GET / HTTP/1.1\r\n", .missing),
        ]
        for (text, error) in cases {
            #expect(throws: error, "\(text)") { try decode(Array(text.utf8)) }
        }
        // No line end within 107 bytes: too long, without waiting for more.
        #expect(throws: ProxyHeaderError.tooLong) {
            try decode(Array(("PROXY " + String(repeating: "x", count: 120)).utf8))
        }
        // A plain request where a header must come.
        #expect(throws: ProxyHeaderError.missing) { try decode(request) }
    }

    @Test func versionTwoGivesTheClientAndLeavesTheRequest() throws {
        let four = Self.v2(family: 0x11, block: [192, 0, 2, 7, 10, 0, 0, 1, 0xC8, 0x22, 0x10, 0x92])
        for step in [nil, 1, 5] {
            let (decoded, rest) = try #require(try decode(four + request, step: step))
            #expect(decoded.source?.ip == "192.0.2.7" && decoded.source?.port == 0xC822)
            #expect(rest == request)
        }
        let six = Self.v2(
            family: 0x21,
            block: [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]
                + [UInt8](repeating: 0, count: 15) + [1] + [0x9C, 0x40, 0x10, 0x92])
        #expect(try decode(six)?.0.source?.ip == "2001:db8::1")
        // With TLVs after the addresses (HAProxy may add some): skipped.
        let tlv = Self.v2(family: 0x11, block: [127, 0, 0, 2, 127, 0, 0, 1, 0, 80, 0, 81, 0x04, 0x00, 0x01, 0x00])
        #expect(try decode(tlv + request)?.1 == request)
        // LOCAL (HAProxy's own health check): no client.
        let local = Self.v2(command: 0x20, family: 0x00, block: [])
        #expect(try decode(local + request).map { $0.0.source == nil && $0.1 == request } == true)
    }

    @Test func versionTwoBadHeadersAreRefused() throws {
        #expect(try decode(Array(Self.v2(family: 0x11, block: [1, 2, 3, 4]).prefix(14))) == nil, "incomplete: waits")
        #expect(throws: ProxyHeaderError.malformed("short IPv4 block")) {
            try decode(Self.v2(family: 0x11, block: [1, 2, 3, 4]))
        }
        #expect(throws: ProxyHeaderError.malformed("version 1")) {
            try decode(Self.v2(command: 0x11, family: 0x11, block: [UInt8](repeating: 0, count: 12)))
        }
        #expect(throws: ProxyHeaderError.malformed("command 2")) {
            try decode(Self.v2(command: 0x22, family: 0x11, block: [UInt8](repeating: 0, count: 12)))
        }
        #expect(throws: ProxyHeaderError.tooLong) {
            try decode(Self.v2(family: 0x11, block: [UInt8](repeating: 0, count: 2000)))
        }
        var corrupted = Self.v2(family: 0x11, block: [UInt8](repeating: 0, count: 12))
        corrupted[5] = 0x00
        #expect(throws: ProxyHeaderError.missing) { try decode(corrupted) }
    }
}
