import COperationLog
import Foundation
import P2PProtocol
import P2PTimeClient
import P2PTimeSOAP

/// The time service, as the client (and zeep) ask it.
public enum TimeChecks {
    static func all(_ url: String) -> [Check] {
        [
            Check(
                "time.soap", quick: true,
                proves: "get_time through SOAP 1.1, posted as zeep posts it, answers 200 with a get_timeResult"
            ) { context in
                let client = try client(url)
                let endpoint = Endpoint(host: client.host, port: client.port)
                let envelope = Array(SOAPEnvelope.request().utf8)
                let head =
                    "POST / HTTP/1.1\r\nHost: \(endpoint)\r\nContent-Type: text/xml; charset=utf-8\r\n"
                    + "SOAPAction: \"\(TimeServiceDescription.operationName)\"\r\nContent-Length: \(envelope.count)\r\n"
                    + "Connection: close\r\n\r\n"
                let result = try await Wire.exchange(Array(head.utf8) + envelope, with: endpoint, context: context)
                let text = String(decoding: result.received, as: UTF8.self)
                try require(
                    text.hasPrefix("HTTP/1.1 200") || text.hasPrefix("HTTP/1.0 200"),
                    "the SOAP call answers 200, got \"\(text.prefix(20))\"")
                guard let bodyStart = text.range(of: "\r\n\r\n") else { throw CheckFailed("no HTTP body") }
                let parsed: SOAPEnvelope.Parsed
                do {
                    parsed = try SOAPEnvelope.parse(Data(text[bodyStart.upperBound...].utf8))
                } catch {
                    throw CheckFailed("the answer is not a SOAP envelope: \(error)")
                }
                if let fault = parsed.faultString { throw CheckFailed("get_time answered a fault: \(fault)") }
                guard let value = parsed.texts[TimeServiceDescription.resultElement] else {
                    throw CheckFailed("the answer holds no \(TimeServiceDescription.resultElement)")
                }
                context.note("get_time answered \(value)")
            },
            Check("time.wsdl", proves: "GET /?wsdl answers 200 with a WSDL that describes get_time") { context in
                let client = try client(url)
                let endpoint = Endpoint(host: client.host, port: client.port)
                let request = "GET /?wsdl HTTP/1.1\r\nHost: \(endpoint)\r\nConnection: close\r\n\r\n"
                let result = try await Wire.exchange(Array(request.utf8), with: endpoint, context: context)
                let text = String(decoding: result.received, as: UTF8.self)
                try require(
                    text.hasPrefix("HTTP/1.1 200") || text.hasPrefix("HTTP/1.0 200"),
                    "GET /?wsdl answers 200, got \"\(text.prefix(20))\"")
                try require(
                    text.contains("definitions") && text.contains("get_time"),
                    "the WSDL describes the get_time operation")
            },
            Check(
                "time.format",
                proves:
                    "the date-time is today's, DD/MM/YYYY HH:MM:SS with day first, within a day of this machine's clock"
            ) { context in
                let value: String
                do { value = try await client(url).currentDateTime() } catch { throw CheckFailed("get_time: \(error)") }
                let formatter = DateFormatter()
                formatter.dateFormat = "dd/MM/yyyy HH:mm:ss"
                formatter.locale = Locale(identifier: "en_US_POSIX")
                formatter.timeZone = TimeZone(identifier: "UTC")
                guard let date = formatter.date(from: value) else {
                    throw CheckFailed("\"\(value)\" is not DD/MM/YYYY HH:MM:SS")
                }
                // Any time zone: within a day of now.
                try require(
                    abs(date.timeIntervalSinceNow) < 26 * 3600,
                    "\"\(value)\" is not within a day of now (month and day swapped?)")
            },
        ]
    }

    static func client(_ url: String) throws -> TimeServiceClient {
        do {
            return try TimeServiceClient(url: url, method: .soap, timeout: .seconds(5))
        } catch {
            throw CheckFailed("\(url): \(error)")
        }
    }
}

/// The operation-log RPC program of rpc/operations.x, through rpcbind on the host.
public enum LogChecks {
    static func all(_ host: String) -> [Check] {
        [
            Check(
                "oplog.registered", quick: true,
                proves: "rpcbind on the host knows program 0x20000099 version 1 over TCP"
            ) { _ in
                try withClient(host, version: UInt32(OPERATION_LOG_VERS)) { _ in }
            },
            Check("oplog.print-operation", proves: "version 1 PRINT_OPERATION of one record answers 0 (printed)") {
                context in
                try withClient(host, version: UInt32(OPERATION_LOG_VERS)) { client in
                    try send(client, version: UInt32(OPERATION_LOG_VERS), count: 1)
                }
                context.note("look for \"p2p-conformance PUBLISH conformance.txt ...\" in its output")
            },
            Check("oplog.print-operations", proves: "version 1 PRINT_OPERATIONS of three records answers 0") { _ in
                try withClient(host, version: UInt32(OPERATION_LOG_VERS)) { client in
                    try send(client, version: UInt32(OPERATION_LOG_VERS), count: 3)
                }
            },
            Check(
                "oplog.version-2",
                proves: "version 2 (our extension: records with their result code) answers 0, where the server has it"
            ) { _ in
                do {
                    try withClient(host, version: UInt32(OPERATION_LOG_VERS_2)) { client in
                        try send(client, version: UInt32(OPERATION_LOG_VERS_2), count: 3)
                    }
                } catch let failure as CheckFailed where failure.message.contains("cannot reach") {
                    throw CheckSkipped("no version 2 registered (a log server of the spec's interface only)")
                }
            },
        ]
    }

    static func withClient(_ host: String, version: UInt32, _ body: (UnsafeMutablePointer<CLIENT>) throws -> Void)
        throws
    {
        var error = [CChar](repeating: 0, count: 256)
        guard let client = oplog_client_create(host, version, 5000, &error, error.count) else {
            throw CheckFailed(
                "cannot reach version \(version) of the program through rpcbind on \(host): \(text(error))")
        }
        defer { oplog_client_destroy(client) }
        try body(client)
    }

    static func send(_ client: UnsafeMutablePointer<CLIENT>, version: UInt32, count: Int) throws {
        let words: [String] = ["p2p-conformance", "PUBLISH", "conformance.txt", DirectoryUnderTest.dateTime]
        let texts = words.map { word in word.withCString { strdup($0)! } }
        defer { texts.forEach { free($0) } }
        var records = (0..<count).map { _ in
            operation_result(
                record: operation_record(user: texts[0], operation: texts[1], file_name: texts[2], date_time: texts[3]),
                result: 0)
        }
        var error = [CChar](repeating: 0, count: 256)
        let status = oplog_client_send(client, version, &records, UInt32(count), &error, error.count)
        try require(status == 0, "the call of \(count) record(s) answers 0 (printed): \(text(error))")
    }
}

/// The C string in `buffer`.
private func text(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
