import Foundation

#if canImport(FoundationXML)
    import FoundationXML
#endif

/// SOAP 1.1 envelopes of the time service: building them, and reading them with a real XML
/// parser.
public enum SOAPEnvelope {
    /// Who is at fault, as SOAP 1.1 fault codes say it.
    public enum FaultCode: String, Sendable {
        case client = "soap:Client"
        case server = "soap:Server"
    }

    /// The request calling `get_time`.
    public static func request() -> String {
        let d = TimeServiceDescription.self
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <soap:Envelope xmlns:soap="\(d.soapEnvelopeNamespace)" xmlns:tns="\(d.targetNamespace)">\
            <soap:Body><tns:\(d.operationName)/></soap:Body></soap:Envelope>
            """
    }

    /// The response carrying `result`.
    public static func response(result: String) -> String {
        let d = TimeServiceDescription.self
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <soap:Envelope xmlns:soap="\(d.soapEnvelopeNamespace)" xmlns:tns="\(d.targetNamespace)">\
            <soap:Body><tns:\(d.responseElement)><tns:\(d.resultElement)>\(xmlEscaped(result))\
            </tns:\(d.resultElement)></tns:\(d.responseElement)></soap:Body></soap:Envelope>
            """
    }

    /// A SOAP 1.1 fault.
    public static func fault(_ code: FaultCode, _ message: String) -> String {
        """
        <?xml version="1.0" encoding="UTF-8"?>
        <soap:Envelope xmlns:soap="\(TimeServiceDescription.soapEnvelopeNamespace)">\
        <soap:Body><soap:Fault><faultcode>\(code.rawValue)</faultcode>\
        <faultstring>\(xmlEscaped(message))</faultstring></soap:Fault></soap:Body></soap:Envelope>
        """
    }

    /// What a received envelope holds.
    public struct Parsed: Sendable, Equatable {
        /// The first element inside `Body`: its namespace and local name.
        public var namespace: String?
        public var name: String
        /// The text of the elements below it, by local name (enough for this one-string service).
        public var texts: [String: String]
        /// Set when the body is a Fault: its faultstring.
        public var faultString: String?
    }

    /// What was wrong with an envelope.
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty
        case malformedXML(String)
        case notAnEnvelope(String)
        case emptyBody

        public var description: String {
            switch self {
            case .empty: return "empty request body"
            case .malformedXML(let reason): return "malformed XML: \(reason)"
            case .notAnEnvelope(let root): return "root element \(root) is not a SOAP 1.1 Envelope"
            case .emptyBody: return "the SOAP Body holds no operation"
            }
        }
    }

    /// Parses `data` as a SOAP 1.1 envelope.
    public static func parse(_ data: Data) throws(ParseError) -> Parsed {
        guard !data.isEmpty else { throw .empty }
        let reader = EnvelopeReader()
        let parser = XMLParser(data: data)
        parser.shouldProcessNamespaces = true
        parser.shouldResolveExternalEntities = false
        parser.delegate = reader
        guard parser.parse() else {
            let reason = parser.parserError.map { "\($0.localizedDescription)" } ?? "parse error"
            throw .malformedXML("\(reason) at line \(parser.lineNumber)")
        }
        guard let root = reader.root else { throw .malformedXML("no root element") }
        // Some XMLParser builds accept a document that ends inside an element.
        guard reader.openElements == 0 else { throw .malformedXML("document ends inside an element") }
        guard root.name == "Envelope", root.namespace == TimeServiceDescription.soapEnvelopeNamespace else {
            throw .notAnEnvelope("{\(root.namespace ?? "")}\(root.name)")
        }
        guard let operation = reader.operation else { throw .emptyBody }
        return Parsed(
            namespace: operation.namespace, name: operation.name, texts: reader.texts,
            faultString: operation.name == "Fault" ? reader.texts["faultstring"] ?? "" : nil)
    }
}

/// Collects the root, the first element in Body and the texts below it.
private final class EnvelopeReader: NSObject, XMLParserDelegate {
    struct Element {
        var namespace: String?
        var name: String
    }

    var root: Element?
    var operation: Element?
    var texts: [String: String] = [:]
    private var stack: [Element] = []
    private var text = ""

    var openElements: Int { stack.count }

    func parser(
        _ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
        qualifiedName qName: String?, attributes attributeDict: [String: String] = [:]
    ) {
        let element = Element(namespace: namespaceURI.flatMap { $0.isEmpty ? nil : $0 }, name: elementName)
        if stack.isEmpty { root = element }
        if stack.count == 2, stack[1].name == "Body", operation == nil { operation = element }
        stack.append(element)
        text = ""
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        text += string
    }

    func parser(
        _ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName qName: String?
    ) {
        if stack.count > 3 {
            texts[elementName] = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        stack.removeLast()
        text = ""
    }
}
