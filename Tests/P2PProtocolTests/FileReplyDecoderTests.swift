import NIOCore
import P2PProtocol
import Testing

/// The serving peer's GET_FILE reply in every framing, fed whole and one byte at a time.
@Suite struct FileReplyDecoderTests {
    struct Outcome: Equatable {
        var status: FileReplyDecoder.Status
        var content: [UInt8]
        var framing: FileReplyDecoder.Framing?
    }

    /// Feeds `reply` in pieces of `piece` bytes, then ends the stream unless the reply completed
    /// or was refused first.
    static func decode(_ reply: [UInt8], piece: Int) throws(FileReplyError) -> Outcome {
        var decoder = FileReplyDecoder()
        var content = ByteBuffer()
        var status = FileReplyDecoder.Status.needMore
        var offset = 0
        while offset < reply.count {
            var chunk = ByteBuffer(bytes: reply[offset..<min(reply.count, offset + piece)])
            offset += piece
            status = try decoder.decode(&chunk, into: &content)
            if status != .needMore { break }
        }
        if status == .needMore { try decoder.finish(into: &content) }
        return Outcome(status: status, content: Array(content.readableBytesView), framing: decoder.framing)
    }

    static let text = Array("Crème brûlée, 日本語, Ελληνικά\n".utf8)
    static let binary: [UInt8] = (0..<3000).map { UInt8(truncatingIfNeeded: $0 % 7 == 0 ? 0 : $0) }
    static let endsInNULs: [UInt8] = Array("tar header".utf8) + [UInt8](repeating: 0, count: 1024)

    @Test(arguments: [1, 2, 7, 100_000])
    func everyFramingGivesTheFileBack(piece: Int) throws {
        for content in [Self.text, [], Self.binary, Self.endsInNULs, [0], [0x30, 0x30]] {
            let framings: [([UInt8], FileReplyDecoder.Framing)] = [
                ([0] + content, .rawCodeUntilClose),
                (Array("0\0".utf8) + content, .digitNULUntilClose),
                (Array("0\(content.count)\0".utf8) + content, .sizePrefixed(Int64(content.count))),
            ]
            for (reply, framing) in framings {
                // A lone NUL as the whole content is indistinguishable from a C string's end.
                if content == [0] && framing == .digitNULUntilClose { continue }
                let outcome = try Self.decode(reply, piece: piece)
                #expect(outcome.content == content, "\(framing), \(content.count) bytes, pieces of \(piece)")
                #expect(outcome.framing == framing)
                if case .sizePrefixed = framing { #expect(outcome.status == .complete) }
            }
        }
    }

    @Test(arguments: [1, 100_000])
    func aCStringOwnersTerminatorIsDropped(piece: Int) throws {
        let outcome = try Self.decode(Array("0\0".utf8) + Self.text + [0], piece: piece)
        #expect(outcome.content == Self.text)
        // An empty text file from such an owner: just the terminator.
        #expect(try Self.decode(Array("0\0\0".utf8), piece: piece).content == [])
        // NULs inside: a binary file, kept whole, last NUL included.
        let binary: [UInt8] = [1, 0, 2, 0]
        #expect(try Self.decode(Array("0\0".utf8) + binary, piece: piece).content == binary)
    }

    @Test func aLoneDigitCodeIsFollowedByTheContent() throws {
        let outcome = try Self.decode([0x30, 5, 0, 1], piece: 1)
        #expect(outcome.content == [5, 0, 1])
        #expect(outcome.framing == .digitUntilClose)
        #expect(try Self.decode([0x30], piece: 1).content == [])
    }

    @Test func bytesAfterTheAnnouncedSizeAreNotTheFiles() throws {
        let outcome = try Self.decode(Array("03\0abcGARBAGE".utf8), piece: 1)
        #expect(outcome.content == Array("abc".utf8))
        #expect(outcome.status == .complete)
    }

    @Test(arguments: [1, 100_000])
    func aSizePrefixedReplyCutShortIsAnError(piece: Int) {
        #expect(throws: FileReplyError.cut(expected: 10, received: 4)) {
            try Self.decode(Array("010\0abcd".utf8), piece: piece)
        }
    }

    @Test func badSizesAndCodesAreErrors() {
        #expect(throws: FileReplyError.invalidSize("12x")) { try Self.decode(Array("012x\0".utf8), piece: 1) }
        let digits = String(repeating: "9", count: 20)
        #expect(throws: FileReplyError.invalidSize(digits)) { try Self.decode(Array("0\(digits)\0".utf8), piece: 1) }
        // 19 digits that do not fit in a 64-bit size.
        let huge = String(repeating: "9", count: 19)
        #expect(throws: FileReplyError.invalidSize(huge)) { try Self.decode(Array("0\(huge)\0".utf8), piece: 3) }
        #expect(throws: FileReplyError.invalidSize("12")) { try Self.decode(Array("012".utf8), piece: 1) }
        #expect(throws: FileReplyError.invalidResultCode(0x41)) { try Self.decode(Array("A".utf8), piece: 1) }
        #expect(throws: FileReplyError.noReply) { try Self.decode([], piece: 1) }
    }

    @Test func otherCodesAreRefusals() throws {
        for (reply, code) in [([UInt8(1)], 1), ([2], 2), (Array("1\0".utf8), 1), (Array("2".utf8), 2)]
            as [([UInt8], UInt8)]
        {
            #expect(try Self.decode(reply, piece: 1).status == .refused(ResultCode(rawValue: code)!))
        }
    }
}
