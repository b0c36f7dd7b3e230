import FuzzDriver
import NIOCore
import P2PProtocol

/// Any bytes: the decoder never crashes, decides the same whether the bytes come at once or
/// one at a time, and whatever it accepts encodes back to bytes it decodes to the same request.
func fuzzRequest(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: start, count: count))

    var whole = RequestDecoder()
    var buffer = ByteBuffer(bytes: bytes)
    let atOnce = Result { () throws(ProtocolError) in try whole.decode(&buffer) }

    var split = RequestDecoder()
    var byByte: Result<Request?, ProtocolError> = .success(nil)
    for byte in bytes {
        var one = ByteBuffer(bytes: [byte])
        do {
            if let request = try split.decode(&one) {
                byByte = .success(request)
                break
            }
        } catch {
            byByte = .failure(error)
            break
        }
    }
    precondition(atOnce.decision == byByte.decision, "split decoding differs: \(atOnce) vs \(byByte)")

    if case .success(let request?) = atOnce {
        var encoded = ByteBuffer()
        do {
            try RequestEncoder.encode(request, into: &encoded)
        } catch {
            preconditionFailure("a decoded request does not encode: \(error)")
        }
        var again = RequestDecoder()
        precondition((try? again.decode(&encoded)) == request, "round trip differs for \(request)")
    } else if case .success(nil) = atOnce {
        // Incomplete: the end of input says what is missing, without crashing.
        _ = whole.finish().description
    }
    return 0
}

runFuzzer { fuzzRequest($0, $1) }
