import Foundation
import Hummingbird
import Logging
import NIOCore
import P2PNetworkSupport
import P2PProtocol
import P2PTimeSOAP

/// Settings of the time service.
public struct TimeServiceConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// The largest request body accepted; a SOAP call is a few hundred bytes.
    public var maxBodySize: Int
    /// One log line per request (method, path, status, time taken).
    public var accessLog: Bool

    public init(host: String = "127.0.0.1", port: Int = 8000, maxBodySize: Int = 64 * 1024, accessLog: Bool = false) {
        self.host = host
        self.port = port
        self.maxBodySize = maxBodySize
        self.accessLog = accessLog
    }
}

/// Builds the time service (PROTOCOL.md section 7): the WSDL at `GET /?wsdl`, SOAP 1.1
/// `get_time` at `POST /`, the same string as text at `GET /time`, and `GET /health`.
///
/// - Parameters:
///   - clock: gives the time to report; tests pass a fixed one.
///   - onServerRunning: called with the listening channel (to learn the port when 0 was asked).
public func buildApplication(
    _ configuration: TimeServiceConfiguration,
    logger: Logger,
    clock: @escaping @Sendable () -> Date = Date.init,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let router = Router()
    if configuration.accessLog { router.add(middleware: AccessLogMiddleware(logger: logger)) }
    TimeController(clock: clock, maxBodySize: configuration.maxBodySize).register(on: router)
    return Application(
        router: router,
        configuration: .init(
            address: .hostname(DualStack.unbracketed(configuration.host), port: configuration.port),
            serverName: "p2p-time"),
        onServerRunning: onServerRunning,
        logger: logger)
}

/// The routes of the time service.
struct TimeController: Sendable {
    let clock: @Sendable () -> Date
    let maxBodySize: Int

    private static let xmlContentType = "text/xml; charset=utf-8"

    func register(on router: Router<BasicRequestContext>) {
        router.get("/", use: wsdl)
        router.post("/", use: soapCall)
        router.get("/time") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: now())))
        }
        router.get("/health") { _, _ in HTTPResponse.Status.ok }
    }

    private func now() -> String {
        DateTimeFormat.string(from: clock())
    }

    /// `GET /?wsdl`: the WSDL, with the address the client used as the endpoint.
    @Sendable func wsdl(_ request: Request, context: BasicRequestContext) async throws -> Response {
        guard request.uri.queryParameters["wsdl"] != nil || request.uri.query?.lowercased() == "wsdl" else {
            throw HTTPError(.notFound, message: "GET /?wsdl for the WSDL, GET /time for the time")
        }
        let host = request.head.authority ?? "localhost"
        return Response(
            status: .ok, headers: [.contentType: Self.xmlContentType],
            body: .init(byteBuffer: ByteBuffer(string: WSDLDocument.xml(location: "http://\(host)/"))))
    }

    /// `POST /`: a SOAP 1.1 call. Anything but a well-formed `get_time` envelope is a
    /// `soap:Client` fault with HTTP 500, as SOAP 1.1 over HTTP requires.
    @Sendable func soapCall(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: maxBodySize)
        } catch is NIOTooManyBytesError {
            return fault("request body larger than \(maxBodySize) bytes", status: .contentTooLarge)
        }
        let envelope: SOAPEnvelope.Parsed
        do {
            envelope = try SOAPEnvelope.parse(Data(body.readableBytesView))
        } catch {
            return fault(error.description)
        }
        let d = TimeServiceDescription.self
        guard envelope.name == d.operationName, envelope.namespace == d.targetNamespace else {
            return fault(
                "unknown operation {\(envelope.namespace ?? "")}\(envelope.name); this service has \(d.operationName)")
        }
        return Response(
            status: .ok, headers: [.contentType: Self.xmlContentType],
            body: .init(byteBuffer: ByteBuffer(string: SOAPEnvelope.response(result: now()))))
    }

    private func fault(_ message: String, status: HTTPResponse.Status = .internalServerError) -> Response {
        Response(
            status: status, headers: [.contentType: Self.xmlContentType],
            body: .init(byteBuffer: ByteBuffer(string: SOAPEnvelope.fault(.client, message))))
    }
}

/// One log line per request: method, path, status and duration.
struct AccessLogMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let start = ContinuousClock.now
        do {
            let response = try await next(request, context)
            log(request, status: response.status.code, since: start)
            return response
        } catch {
            let status = (error as? any HTTPResponseError)?.status.code ?? 500
            log(request, status: status, since: start)
            throw error
        }
    }

    private func log(_ request: Request, status: Int, since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        let milliseconds = Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000
        logger.info(
            "\(request.method) \(request.uri.path) \(status) \(String(format: "%.2f", milliseconds)) ms")
    }
}
