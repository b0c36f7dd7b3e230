import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import P2PProtocol
import P2PTestSupport
import P2PTimeClient
import P2PTimeSOAP
import P2PTimeServer
import Testing

#if canImport(FoundationXML)
    import FoundationXML
#endif

let quietLogger: Logger = {
    var logger = Logger(label: "test-time")
    logger.logLevel = .critical
    return logger
}()

/// The fixed instant the router tests' clock reports: 25/11/2026 13:05:09 in local time.
let fixedDate: Date = {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = .current
    return calendar.date(from: DateComponents(year: 2026, month: 11, day: 25, hour: 13, minute: 5, second: 9))!
}()

func app(clock: @escaping @Sendable () -> Date = { fixedDate }) -> some ApplicationProtocol {
    buildApplication(TimeServiceConfiguration(port: 0), logger: quietLogger, clock: clock)
}

/// Whether `text` is well-formed XML.
func isWellFormedXML(_ text: String) -> Bool {
    XMLParser(data: Data(text.utf8)).parse()
}

@Suite struct TimeRouterTests {
    @Test func wsdlIsWellFormedAndDescribesGetTime() async throws {
        try await app().test(.router) { client in
            try await client.execute(uri: "/?wsdl", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType]?.hasPrefix("text/xml") == true)
                let wsdl = String(buffer: response.body)
                #expect(isWellFormedXML(wsdl))
                #expect(wsdl.contains(#"targetNamespace="http://tests.python-zeep.org/""#))
                #expect(wsdl.contains(#"<wsdl:operation name="get_time">"#))
                #expect(
                    wsdl.contains(#"<soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>"#)
                )
            }
        }
    }

    @Test func getTimeEnvelopeReturnsTheTime() async throws {
        try await app().test(.router) { client in
            try await client.execute(
                uri: "/", method: .post, headers: [.contentType: "text/xml"],
                body: ByteBuffer(string: SOAPEnvelope.request())
            ) { response in
                #expect(response.status == .ok)
                let parsed = try SOAPEnvelope.parse(Data(response.body.readableBytesView))
                #expect(parsed.name == "get_timeResponse")
                #expect(parsed.namespace == TimeServiceDescription.targetNamespace)
                #expect(parsed.texts["get_timeResult"] == "25/11/2026 13:05:09")
            }
        }
    }

    @Test func realClockIsWithinSecondsOfNow() async throws {
        try await app(clock: Date.init).test(.router) { client in
            try await client.execute(uri: "/time", method: .get) { response in
                #expect(response.status == .ok)
                let text = String(buffer: response.body)
                #expect(text.wholeMatch(of: /\d{2}\/\d{2}\/\d{4} \d{2}:\d{2}:\d{2}/) != nil)
                let formatter = DateFormatter()
                formatter.dateFormat = "dd/MM/yyyy HH:mm:ss"
                formatter.timeZone = .current
                let reported = try #require(formatter.date(from: text))
                #expect(abs(reported.timeIntervalSinceNow) < 5)
            }
        }
    }

    @Test func plainTimeAndHealth() async throws {
        try await app().test(.router) { client in
            try await client.execute(uri: "/time", method: .get) { response in
                #expect(response.headers[.contentType] == "text/plain; charset=utf-8")
                #expect(String(buffer: response.body) == "25/11/2026 13:05:09")
            }
            try await client.execute(uri: "/health", method: .get) { response in
                #expect(response.status == .ok)
            }
        }
    }

    /// The fault's HTTP status and faultstring, checked to be a `soap:Client` SOAP 1.1 fault.
    func fault(_ body: String, _ client: some TestClientProtocol) async throws -> (HTTPResponse.Status, String) {
        try await client.execute(uri: "/", method: .post, body: ByteBuffer(string: body)) { response in
            let text = String(buffer: response.body)
            #expect(text.contains("<faultcode>soap:Client</faultcode>"))
            let parsed = try SOAPEnvelope.parse(Data(text.utf8))
            return (response.status, try #require(parsed.faultString))
        }
    }

    @Test func malformedXMLIsAClientFault() async throws {
        try await app().test(.router) { client in
            let (status, message) = try await fault("<soap:Envelope><unclosed>", client)
            #expect(status == .internalServerError)
            #expect(message.hasPrefix("malformed XML"))
        }
    }

    @Test func unknownOperationIsAClientFault() async throws {
        try await app().test(.router) { client in
            let body = SOAPEnvelope.request().replacingOccurrences(of: "get_time", with: "get_date")
            let (status, message) = try await fault(body, client)
            #expect(status == .internalServerError)
            #expect(message.contains("unknown operation {http://tests.python-zeep.org/}get_date"))
        }
    }

    @Test func emptyBodyIsAClientFault() async throws {
        try await app().test(.router) { client in
            let (status, message) = try await fault("", client)
            #expect(status == .internalServerError)
            #expect(message == "empty request body")
        }
    }

    @Test func notAnEnvelopeIsAClientFault() async throws {
        try await app().test(.router) { client in
            let (_, message) = try await fault("<hello/>", client)
            #expect(message.contains("is not a SOAP 1.1 Envelope"))
        }
    }

    @Test func hugeBodyIsRefused() async throws {
        try await app().test(.router) { client in
            let huge = String(repeating: "<a>x</a>", count: 100_000)
            let (status, message) = try await fault("<r>\(huge)</r>", client)
            #expect(status == .contentTooLarge)
            #expect(message.contains("larger than"))
        }
    }

    @Test func unknownPathIsNotFound() async throws {
        try await app().test(.router) { client in
            try await client.execute(uri: "/nothing", method: .get) { response in
                #expect(response.status == .notFound)
            }
        }
    }
}

/// The service on a real socket: our Swift client, and the real zeep client.
@Suite struct TimeServiceLiveTests {
    /// Runs the service on 127.0.0.1 with a free port for the duration of `body`.
    func withLiveService(_ body: @escaping @Sendable (Int) async throws -> Void) async throws {
        let port = Locked<Int?>(nil)
        let application = buildApplication(
            TimeServiceConfiguration(port: 0), logger: quietLogger,
            onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } })
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await application.run() }
            try await waitUntil("the time service to listen") { port.value != nil }
            defer { group.cancelAll() }
            try await body(port.value!)
        }
    }

    @Test(arguments: TimeServiceClient.Method.allCases)
    func swiftClientGetsTheTime(_ method: TimeServiceClient.Method) async throws {
        try await withLiveService { port in
            let client = try TimeServiceClient(url: "http://127.0.0.1:\(port)", method: method)
            let text = try await client.currentDateTime()
            #expect(DateTimeFormat.isValid(text))
        }
    }

    @Test func swiftClientReportsAServiceThatIsDown() async throws {
        // A port that was just free: nothing listens there.
        let closed = try ClosedPort()
        let client = try TimeServiceClient(url: "http://127.0.0.1:\(closed.port)", timeout: .seconds(2))
        await #expect(throws: TimeServiceError.self) { try await client.currentDateTime() }
    }

    @Test func zeepClientCallsGetTimeUnchanged() async throws {
        let python = "\(packageRoot)/.venv/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw SetupError("\(python) missing: run ./setup.sh (make test does) to create the venv with zeep")
        }
        try await withLiveService { port in
            let script = """
                import sys, zeep
                client = zeep.Client("http://localhost:\(port)/?wsdl")
                print(client.service.get_time())
                """
            let zeep = try ChildProcess(python, ["-c", script])
            let status = try await zeep.waitForExit(timeout: 60)
            #expect(status == 0, "zeep failed: \(zeep.stderrLines.suffix(5))")
            let line = try #require(zeep.stdoutLines.first)
            #expect(DateTimeFormat.isValid(line), "zeep printed \(line)")
        }
    }
}
