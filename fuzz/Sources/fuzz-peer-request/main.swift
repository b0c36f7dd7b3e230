import FuzzDriver
import NIOCore
import P2PProtocol

/// Any bytes, as a stranger sends them to a client's file server: the GET_FILE decoder never
/// crashes and decides the same whether the bytes come at once or split in two; the name's
/// reserved forms (info, range, reversed) parse without trapping, a range's end is a number,
/// a parsed form's name parses back to the same form, and the escaped name a log line would
/// show holds no control character.
func fuzzPeerRequest(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: start, count: count))

    func decode(_ chunks: [ArraySlice<UInt8>]) -> Result<FileRequest?, ProtocolError> {
        var decoder = FileRequestDecoder()
        for chunk in chunks {
            var buffer = ByteBuffer(bytes: chunk)
            do {
                if let request = try decoder.decode(&buffer) { return .success(request) }
            } catch {
                return .failure(error)
            }
        }
        return .success(nil)
    }

    let atOnce = decode([bytes[...]])
    let split = bytes.count / 2
    let inTwo = decode([bytes[..<split], bytes[split...]])
    switch (atOnce, inTwo) {
    case (.success(let a), .success(let b)):
        precondition(a == b, "\(String(describing: a)) vs \(String(describing: b))")
    case (.failure, .failure): break
    default: preconditionFailure("at once: \(atOnce), in two: \(inTwo)")
    }
    guard case .success(let request?) = atOnce else { return 0 }
    let name = request.fileName
    precondition(!ControlCharacters.containsControlCharacters(ControlCharacters.escaped(name)))
    precondition(ControlCharacters.escaped(name, maxBytes: 256).utf8.count <= 256)
    guard let parsed = PeerRequest(fileName: name) else { return 0 }
    switch parsed {
    case .range(let offset, let length, let file):
        precondition(offset >= 0 && length >= 0 && !file.isEmpty)
        let (_, overflow) = offset.addingReportingOverflow(length)
        precondition(!overflow, "range \(offset)-\(length) ends past Int64")
    case .info(let file):
        precondition(!file.isEmpty)
    case .reversed(let token):
        precondition(!token.isEmpty)
    case .peerCheck, .tls, .unknownReserved:
        break
    }
    if let again = parsed.fileName {
        precondition(PeerRequest(fileName: again) == parsed, "\(parsed) does not parse back from \(again)")
    }
    return 0
}

runFuzzer { fuzzPeerRequest($0, $1) }
