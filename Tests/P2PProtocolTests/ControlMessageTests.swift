import NIOCore
import P2PProtocol
import Testing

@Suite struct ControlMessageTests {
    static let messages: [ControlMessage] = [
        .ping, .keepalive(milliseconds: 2000), .reachability(true), .reachability(false),
        .whoRequest(id: "7", user: "alice"), .whoReply(id: "7", route: .unreachable),
        .reverseRequest(id: "8", owner: "alice"), .reverseReply(id: "8", code: 0, token: ControlMessage.makeToken()),
        .dial(token: "00ff", host: "198.18.0.2", port: "4000"),
    ]

    @Test func everyMessageComesBackWholeWhateverTheSplit() throws {
        var wire = ByteBuffer()
        for message in Self.messages { try message.encode(into: &wire) }
        for step in [1, 2, 3, 7, wire.readableBytes] {
            var decoder = ControlMessageDecoder()
            var decoded: [ControlMessage] = []
            var rest = wire
            while rest.readableBytes > 0 {
                var piece = rest.readSlice(length: min(step, rest.readableBytes))!
                decoder.append(&piece)
                while let message = try decoder.next() { decoded.append(message) }
            }
            #expect(decoded == Self.messages, "split every \(step) bytes")
        }
    }

    @Test func unknownOrMalformedMessagesAreErrors() {
        for fields in [["HELLO"], ["WHO_IS", "1", "somewhere"], ["KEEPALIVE", "-5"], ["REVERSING", "1", "x", "t"]] {
            var decoder = ControlMessageDecoder()
            var bytes = ByteBuffer(bytes: fields.flatMap { Array($0.utf8) + [0] })
            decoder.append(&bytes)
            #expect(throws: ProtocolError.self, "\(fields)") { _ = try decoder.next() }
        }
    }

    @Test func tokensAre128RandomBitsInHex() {
        let tokens = (0..<100).map { _ in ControlMessage.makeToken() }
        #expect(Set(tokens).count == 100)
        #expect(tokens.allSatisfy { $0.utf8.count == 32 && $0.allSatisfy(\.isHexDigit) })
    }

    @Test func theReversedHelloIsAReservedNameThirdPartyPeersAnswerOne() {
        let name = PeerRequest.reversed(token: "abc").fileName
        #expect(name == "/.p2p-reserved/v1/reversed/abc")
        #expect(PeerRequest(fileName: name!) == .reversed(token: "abc"))
        #expect(ReservedFileName.isReserved(ReservedFileName.capabilities))
    }
}
