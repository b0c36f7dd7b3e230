import FuzzDriver
import NIOCore
import P2PProtocol

/// Any bytes: the PROXY header decoder never crashes, never reads past what it was given, and
/// gives the same header (consuming the same bytes) whether the bytes arrive at once or grow a
/// byte at a time.
func fuzzProxyHeader(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: start, count: count))
    let decoder = ProxyHeaderDecoder()

    func decode(_ prefix: ArraySlice<UInt8>) -> (Result<ProxyHeader?, ProxyHeaderError>, consumed: Int) {
        var buffer = ByteBuffer(bytes: prefix)
        let result = Result { () throws(ProxyHeaderError) in try decoder.decode(&buffer) }
        precondition(buffer.readerIndex <= prefix.count)
        return (result, buffer.readerIndex)
    }

    let atOnce = decode(bytes[...])
    // Growing: the first length at which the decoder decides must decide the same as all at once.
    for length in 0...bytes.count {
        let growing = decode(bytes[..<length])
        switch growing.0 {
        case .success(nil):
            continue
        case .success(let header?):
            guard case .success(header?) = atOnce.0, growing.consumed == atOnce.consumed else {
                preconditionFailure("at \(length) bytes: \(growing) but at once: \(atOnce)")
            }
        case .failure:
            guard case .failure = atOnce.0 else {
                preconditionFailure("at \(length) bytes: \(growing) but at once: \(atOnce)")
            }
        }
        break
    }
    return 0
}

runFuzzer { fuzzProxyHeader($0, $1) }
