import FuzzDriver
import NIOCore
import P2PProtocol

/// Any bytes as the reply to any operation (the first byte picks it), as a peer's GET_FILE
/// reply and as its file information: no decoder crashes, and each decides the same whether
/// the bytes come at once or one at a time.
func fuzzReply(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    guard count > 0 else { return 0 }
    let operations = DirectoryOperation.allCases
    let operation = operations[Int(start[0]) % operations.count]
    let bytes = Array(UnsafeBufferPointer(start: start + 1, count: count - 1))

    // The directory's reply.
    func reply(_ chunks: [[UInt8]]) -> Result<Reply?, ProtocolError> {
        var decoder = ReplyDecoder(operation: operation)
        for chunk in chunks {
            var buffer = ByteBuffer(bytes: chunk)
            do {
                if let reply = try decoder.decode(&buffer) { return .success(reply) }
            } catch {
                return .failure(error)
            }
        }
        _ = decoder.finish().description
        return .success(nil)
    }
    let replyAtOnce = reply([bytes])
    let replyByByte = reply(bytes.map { [$0] })
    precondition(replyAtOnce.decision == replyByByte.decision, "\(operation): \(replyAtOnce) vs \(replyByByte)")

    // A peer's file: the same content and outcome however the bytes are split.
    func file(_ chunks: [[UInt8]]) -> (status: Result<FileReplyDecoder.Status, FileReplyError>, content: [UInt8]) {
        var decoder = FileReplyDecoder()
        var content = ByteBuffer()
        var status: FileReplyDecoder.Status = .needMore
        for chunk in chunks {
            var buffer = ByteBuffer(bytes: chunk)
            do {
                status = try decoder.decode(&buffer, into: &content)
            } catch {
                return (.failure(error), Array(content.readableBytesView))
            }
            if case .refused = status { break }
            if case .complete = status { break }
        }
        if case .needMore = status {
            do {
                try decoder.finish(into: &content)
            } catch {
                return (.failure(error), Array(content.readableBytesView))
            }
        }
        return (.success(status), Array(content.readableBytesView))
    }
    let fileAtOnce = file([bytes])
    let fileByByte = file(bytes.map { [$0] })
    precondition(fileAtOnce.status == fileByByte.status, "file: \(fileAtOnce.status) vs \(fileByByte.status)")
    precondition(fileAtOnce.content == fileByByte.content, "file content differs when split")
    precondition(fileAtOnce.content.count <= bytes.count, "more content than bytes")

    // A peer's file information (the extension's GET_FILE_INFO reply).
    func info(_ chunks: [[UInt8]]) -> Result<FileInfoDecoder.Outcome?, ProtocolError> {
        var decoder = FileInfoDecoder()
        for chunk in chunks {
            var buffer = ByteBuffer(bytes: chunk)
            do {
                if let outcome = try decoder.decode(&buffer) { return .success(outcome) }
            } catch {
                return .failure(error)
            }
        }
        return .success(nil)
    }
    precondition(info([bytes]).decision == info(bytes.map { [$0] }).decision, "file information differs when split")
    return 0
}

runFuzzer { fuzzReply($0, $1) }
