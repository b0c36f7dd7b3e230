import NIOCore
import P2PProtocol
import Testing

@testable import P2PDirectory

/// The connection's state machine as event/action sequences, without sockets: every path the
/// socket tests cover (PROXY headers, a request a byte at a time, silence until the deadline,
/// garbage, half-close, quiescing).
@Suite struct DirectoryConnectionStateMachineTests {
    typealias Machine = DirectoryConnectionStateMachine

    static let request = Request(dateTime: "03/12/2026 10:00:00", command: .register(user: "alice"))

    static var requestBytes: ByteBuffer {
        var buffer = ByteBuffer()
        try! RequestEncoder.encode(request, into: &buffer)
        return buffer
    }

    /// The request it serves and the client it stands for, or nil for any other action.
    static func served(_ action: Machine.Action) -> (Request, ProxiedClient?)? {
        if case .serve(let request, let client) = action { return (request, client) }
        return nil
    }

    static func rejection(_ action: Machine.Action) -> (Machine.Rejection, ResultCode?, Bool)? {
        if case .reject(_, let rejection, let code, let closeNow) = action { return (rejection, code, closeNow) }
        return nil
    }

    static func isWait(_ action: Machine.Action) -> Bool {
        if case .wait = action { return true }
        return false
    }

    static func isClose(_ action: Machine.Action) -> Bool {
        if case .close = action { return true }
        return false
    }

    @Test func aRequestInOnePieceIsServedOnceAndAnsweredOnce() {
        var machine = Machine(expectsProxyHeader: false)
        let served = try! #require(Self.served(machine.bytesReceived(Self.requestBytes)))
        #expect(served.0 == Self.request && served.1 == nil)
        // Nothing else is read or rejected while the store works.
        #expect(Self.isWait(machine.bytesReceived(ByteBuffer(string: "junk"))))
        #expect(Self.isWait(machine.inputClosed()))
        #expect(Self.isWait(machine.quiesce()))
        let first = machine.replyReady()
        let second = machine.replyReady()
        #expect(first && !second)
    }

    @Test func aRequestAByteAtATime() {
        var machine = Machine(expectsProxyHeader: false)
        let bytes = Array(Self.requestBytes.readableBytesView)
        for byte in bytes.dropLast() {
            #expect(Self.isWait(machine.bytesReceived(ByteBuffer(bytes: [byte]))))
        }
        // Bytes came: quiescing does not cut it short.
        #expect(Self.isWait(machine.quiesce()))
        #expect(Self.served(machine.bytesReceived(ByteBuffer(bytes: [bytes.last!])))?.0 == Self.request)
    }

    @Test func proxyHeaderThenRequestTakesTheHeadersAddress() {
        var machine = Machine(expectsProxyHeader: true)
        var bytes = ByteBuffer(string: "PROXY TCP4 203.0.113.7 192.0.2.1 40000 4242\r\n")
        var request = Self.requestBytes
        bytes.writeBuffer(&request)
        // Split inside the header and inside the request.
        let all = Array(bytes.readableBytesView)
        #expect(Self.isWait(machine.bytesReceived(ByteBuffer(bytes: all[0..<10]))))
        // The header is whole: its address must be admitted before the request is read.
        guard case .admit(let clientIP) = machine.bytesReceived(ByteBuffer(bytes: all[10..<50])) else {
            Issue.record("the header's address was not handed over for admission")
            return
        }
        #expect(clientIP == "203.0.113.7")
        #expect(Self.isWait(machine.admitted(true)))
        let served = try! #require(Self.served(machine.bytesReceived(ByteBuffer(bytes: all[50...]))))
        // The port too: a hole punch behind the balancer needs the one the client's NAT gave it.
        #expect(served.0 == Self.request && served.1 == ProxiedClient(ip: "203.0.113.7", port: 40000))
    }

    @Test func theRequestAfterTheHeaderWaitsForAdmission() {
        var bytes = ByteBuffer(string: "PROXY TCP4 203.0.113.7 192.0.2.1 40000 4242\r\n")
        var request = Self.requestBytes
        bytes.writeBuffer(&request)
        // Header and request in one read: the request is served only once the address is admitted.
        var machine = Machine(expectsProxyHeader: true)
        guard case .admit = machine.bytesReceived(bytes) else {
            Issue.record("the header's address was not handed over for admission")
            return
        }
        let served = try! #require(Self.served(machine.admitted(true)))
        #expect(served.0 == Self.request && served.1?.ip == "203.0.113.7")
        // An address over its limit: closed, and nothing of the request is read.
        var refused = Machine(expectsProxyHeader: true)
        guard case .admit = refused.bytesReceived(bytes) else {
            Issue.record("the header's address was not handed over for admission")
            return
        }
        #expect(Self.isClose(refused.admitted(false)))
        #expect(Self.isWait(refused.bytesReceived(Self.requestBytes)))
        #expect(Self.isWait(refused.inputClosed()))
    }

    @Test func aLocalHeaderKeepsTheConnectionsAddress() {
        var machine = Machine(expectsProxyHeader: true)
        // PROXY v2 LOCAL: signature, version 2 command 0, family 0, length 0.
        var bytes = ByteBuffer(bytes: [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00, 0x00,
        ])
        #expect(Self.isWait(machine.bytesReceived(bytes)))
        // A health check: closed without a byte of a request, quietly.
        #expect(Self.rejection(machine.inputClosed())?.0 == .emptyConnection)
        var again = Machine(expectsProxyHeader: true)
        var request = Self.requestBytes
        bytes.writeBuffer(&request)
        #expect(Self.served(again.bytesReceived(bytes))?.1 == nil)
    }

    @Test func aBadOrMissingProxyHeaderCloses() {
        var machine = Machine(expectsProxyHeader: true)
        guard case .refuse(_, let sawBytes) = machine.bytesReceived(Self.requestBytes) else {
            Issue.record("a request without a header must be refused")
            return
        }
        #expect(sawBytes)
        #expect(Self.isWait(machine.bytesReceived(Self.requestBytes)), "nothing after the refusal is read")
        var silent = Machine(expectsProxyHeader: true)
        guard case .refuse(_, false) = silent.inputClosed() else {
            Issue.record("a connection closed without a byte is refused quietly")
            return
        }
    }

    @Test func garbageIsRejectedAndDrained() {
        var machine = Machine(expectsProxyHeader: false)
        let (rejection, code, closeNow) = try! #require(
            Self.rejection(machine.bytesReceived(ByteBuffer(string: "HELLO\0"))))
        #expect(rejection == .badRequest && code == nil && !closeNow)
        // Draining: what the client still sends is dropped; its close ends the connection.
        #expect(Self.isWait(machine.bytesReceived(ByteBuffer(string: "more"))))
        #expect(Self.isClose(machine.inputClosed()))
        #expect(Self.isWait(machine.inputClosed()))
    }

    @Test func aFieldTooLongGetsTheOperationsOtherCode() {
        var machine = Machine(expectsProxyHeader: false)
        var bytes = ByteBuffer(string: "PUBLISH\0")
        bytes.writeString(String(repeating: "x", count: 300))
        let (rejection, code, _) = try! #require(Self.rejection(machine.bytesReceived(bytes)))
        #expect(rejection == .badRequest && code == DirectoryOperation.publish.otherErrorCode)
    }

    @Test func halfCloseMidRequestIsRejectedWithTheCode() {
        var machine = Machine(expectsProxyHeader: false)
        #expect(Self.isWait(machine.bytesReceived(ByteBuffer(string: "REGISTER\0"))))
        let (rejection, code, _) = try! #require(Self.rejection(machine.inputClosed()))
        #expect(rejection == .badRequest && code == DirectoryOperation.register.otherErrorCode)
    }

    @Test func anEmptyConnectionIsAProbe() {
        var machine = Machine(expectsProxyHeader: false)
        #expect(Self.rejection(machine.inputClosed())?.0 == .emptyConnection)
        var reset = Machine(expectsProxyHeader: false)
        #expect(Self.rejection(reset.errorCaught(IOError(errnoCode: 104, reason: "read")))?.0 == .endedBeforeRequest)
    }

    @Test func silenceUntilTheDeadlineClosesAtOnce() {
        var machine = Machine(expectsProxyHeader: false)
        let (rejection, code, closeNow) = try! #require(
            Self.rejection(machine.errorCaught(DirectoryConnectionHandler.TimedOut(timeout: .seconds(5)))))
        #expect(rejection == .timedOut && code == nil && closeNow)
        // The deadline again, while draining: closed.
        #expect(Self.isClose(machine.errorCaught(DirectoryConnectionHandler.TimedOut(timeout: .seconds(5)))))
    }

    @Test func quiescingClosesOnlyConnectionsWithoutABytes() {
        var idle = Machine(expectsProxyHeader: false)
        #expect(Self.isClose(idle.quiesce()))
        #expect(Self.isWait(idle.bytesReceived(Self.requestBytes)))
        var idleBehindProxy = Machine(expectsProxyHeader: true)
        #expect(Self.isClose(idleBehindProxy.quiesce()))
        var started = Machine(expectsProxyHeader: false)
        #expect(Self.isWait(started.bytesReceived(ByteBuffer(string: "REG"))))
        #expect(Self.isWait(started.quiesce()))
        var serving = Machine(expectsProxyHeader: false)
        _ = serving.bytesReceived(Self.requestBytes)
        #expect(Self.isWait(serving.quiesce()))
        let ready = serving.replyReady()
        #expect(ready)
    }

    @Test func aClosedChannelTakesNoReply() {
        var machine = Machine(expectsProxyHeader: false)
        _ = machine.bytesReceived(Self.requestBytes)
        machine.channelInactive()
        let ready = machine.replyReady()
        #expect(!ready)
    }
}
