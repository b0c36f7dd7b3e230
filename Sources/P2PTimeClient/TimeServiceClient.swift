import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import P2PNetworkSupport
import P2PProtocol
import P2PTimeSOAP

/// Why the time service gave no date-time.
public enum TimeServiceError: Error, Equatable, CustomStringConvertible {
    case invalidURL(String)
    case unreachable(String)
    case timedOut(Duration)
    case httpStatus(Int)
    case fault(String)
    case invalidResponse(String)

    public var description: String {
        switch self {
        case .invalidURL(let url): return "invalid time service URL \(url)"
        case .unreachable(let reason): return "time service unreachable (\(reason))"
        case .timedOut(let timeout): return "time service did not answer within \(timeout)"
        case .httpStatus(let status): return "time service answered HTTP \(status)"
        case .fault(let message): return "time service fault: \(message)"
        case .invalidResponse(let reason): return "invalid time service response: \(reason)"
        }
    }
}

/// Asks the time service (PROTOCOL.md section 7) for the current date-time, by SOAP
/// `get_time` or by `GET /time`, with a short timeout.
public struct TimeServiceClient: Sendable {
    public enum Method: String, Sendable, CaseIterable {
        case soap
        case plain
    }

    public let host: String
    public let port: Int
    public let method: Method
    public let timeout: Duration

    /// - Parameter url: `http://host[:port]`, as in `--time-service`.
    public init(url: String, method: Method = .soap, timeout: Duration = .seconds(2)) throws(TimeServiceError) {
        guard let components = URLComponents(string: url), components.scheme == "http",
            let host = components.host, !host.isEmpty
        else { throw .invalidURL(url) }
        // An IPv6 literal comes bracketed in the URL (`http://[::1]:8000`).
        self.host = DualStack.unbracketed(host)
        self.port = components.port ?? 80
        self.method = method
        self.timeout = timeout
    }

    /// The service's `DD/MM/YYYY HH:MM:SS`.
    public func currentDateTime() async throws(TimeServiceError) -> String {
        let (status, body): (Int, ByteBuffer)
        do {
            (status, body) = try await withTimeout(timeout, error: TimeServiceError.timedOut(timeout)) {
                try await self.exchange()
            }
        } catch let error as TimeServiceError {
            throw error
        } catch {
            throw .unreachable("\(DualStack.hostAndPort(host, port)): \(shortDescription(of: error))")
        }
        let text = String(buffer: body)
        let result: String
        switch method {
        case .plain:
            guard status == 200 else { throw .httpStatus(status) }
            result = text.trimmingCharacters(in: .whitespacesAndNewlines)
        case .soap:
            let envelope: SOAPEnvelope.Parsed
            do {
                envelope = try SOAPEnvelope.parse(Data(body.readableBytesView))
            } catch {
                throw status == 200 ? .invalidResponse(error.description) : .httpStatus(status)
            }
            if let fault = envelope.faultString { throw .fault(fault) }
            guard status == 200 else { throw .httpStatus(status) }
            guard let value = envelope.texts[TimeServiceDescription.resultElement] else {
                throw .invalidResponse("no \(TimeServiceDescription.resultElement) in the response")
            }
            result = value
        }
        guard DateTimeFormat.isValid(result) else {
            throw .invalidResponse("\"\(result.prefix(40))\" is not DD/MM/YYYY HH:MM:SS")
        }
        return result
    }

    /// One HTTP/1.1 request; returns the status and the whole body.
    private func exchange() async throws -> (Int, ByteBuffer) {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(
                .nanoseconds(
                    Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)
            )
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        let body: ByteBuffer
        var head: HTTPRequestHead
        switch method {
        case .soap:
            body = ByteBuffer(string: SOAPEnvelope.request())
            head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")
            head.headers.add(name: "Content-Type", value: "text/xml; charset=utf-8")
            head.headers.add(name: "SOAPAction", value: "\"\(TimeServiceDescription.operationName)\"")
            head.headers.add(name: "Content-Length", value: String(body.readableBytes))
        case .plain:
            body = ByteBuffer()
            head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/time")
        }
        head.headers.add(name: "Host", value: DualStack.hostAndPort(host, port))
        head.headers.add(name: "Connection", value: "close")
        let request = head
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(.head(request))
            if body.readableBytes > 0 { try await outbound.write(.body(.byteBuffer(body))) }
            try await outbound.write(.end(nil))
            var status = 0
            var received = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let response): status = Int(response.status.code)
                case .body(var chunk):
                    guard received.readableBytes + chunk.readableBytes <= 64 * 1024 else {
                        throw TimeServiceError.invalidResponse("response larger than 64 KiB")
                    }
                    received.writeBuffer(&chunk)
                case .end: return (status, received)
                }
            }
            throw TimeServiceError.invalidResponse("connection closed before the response ended")
        }
    }
}
