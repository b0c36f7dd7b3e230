/// The WSDL 1.1 document of the time service: SOAP 1.1 binding, document/literal wrapped,
/// generated from ``TimeServiceDescription``.
public enum WSDLDocument {
    /// The WSDL, with `location` (for example `http://localhost:8000/`) as the endpoint.
    public static func xml(location: String) -> String {
        let d = TimeServiceDescription.self
        let op = d.operationName
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" \
            xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" \
            xmlns:xs="http://www.w3.org/2001/XMLSchema" \
            xmlns:tns="\(d.targetNamespace)" \
            targetNamespace="\(d.targetNamespace)" name="\(d.serviceName)">
              <wsdl:types>
                <xs:schema targetNamespace="\(d.targetNamespace)" elementFormDefault="qualified">
                  <xs:element name="\(op)">
                    <xs:complexType><xs:sequence/></xs:complexType>
                  </xs:element>
                  <xs:element name="\(d.responseElement)">
                    <xs:complexType>
                      <xs:sequence>
                        <xs:element name="\(d.resultElement)" type="xs:string" minOccurs="0" nillable="true"/>
                      </xs:sequence>
                    </xs:complexType>
                  </xs:element>
                </xs:schema>
              </wsdl:types>
              <wsdl:message name="\(op)">
                <wsdl:part name="\(op)" element="tns:\(op)"/>
              </wsdl:message>
              <wsdl:message name="\(d.responseElement)">
                <wsdl:part name="\(d.responseElement)" element="tns:\(d.responseElement)"/>
              </wsdl:message>
              <wsdl:portType name="\(d.serviceName)">
                <wsdl:operation name="\(op)">
                  <wsdl:input name="\(op)" message="tns:\(op)"/>
                  <wsdl:output name="\(d.responseElement)" message="tns:\(d.responseElement)"/>
                </wsdl:operation>
              </wsdl:portType>
              <wsdl:binding name="\(d.serviceName)" type="tns:\(d.serviceName)">
                <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
                <wsdl:operation name="\(op)">
                  <soap:operation soapAction="\(op)" style="document"/>
                  <wsdl:input name="\(op)"><soap:body use="literal"/></wsdl:input>
                  <wsdl:output name="\(d.responseElement)"><soap:body use="literal"/></wsdl:output>
                </wsdl:operation>
              </wsdl:binding>
              <wsdl:service name="\(d.serviceName)">
                <wsdl:port name="\(d.portName)" binding="tns:\(d.serviceName)">
                  <soap:address location="\(xmlEscaped(location))"/>
                </wsdl:port>
              </wsdl:service>
            </wsdl:definitions>

            """
    }
}
