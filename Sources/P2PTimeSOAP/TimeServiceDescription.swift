/// The one description of the time service's SOAP interface (PROTOCOL.md section 7), from
/// which the WSDL is generated and against which requests are dispatched, so the two cannot
/// disagree. The names follow what the existing spyne service exposes, which zeep clients
/// already use.
public enum TimeServiceDescription {
    public static let targetNamespace = "http://tests.python-zeep.org/"
    public static let serviceName = "TimeService"
    public static let portName = "Application"
    /// The operation: no arguments, returns `DD/MM/YYYY HH:MM:SS`.
    public static let operationName = "get_time"
    /// Document/literal wrapped: the response element and the string element inside it.
    public static let responseElement = "get_timeResponse"
    public static let resultElement = "get_timeResult"

    public static let soapEnvelopeNamespace = "http://schemas.xmlsoap.org/soap/envelope/"
}
