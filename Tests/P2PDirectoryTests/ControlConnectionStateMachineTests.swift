import NIOCore
import P2PProtocol
import Testing

@testable import P2PDirectory

/// One control connection's decisions as event and action sequences: no sockets, no clock.
@Suite struct ControlConnectionStateMachineTests {
    typealias Machine = ControlConnectionStateMachine
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static func at(milliseconds: Int64) -> NIODeadline { start + .milliseconds(milliseconds) }

    static func machine(burst: Int = 16, perSecond: Double = 2) -> Machine {
        Machine(limits: .init(requestBurst: burst, requestsPerSecond: perSecond), keepalive: .seconds(2), now: start)
    }

    @Test func aClientSilentForThreeIntervalsIsClosed() {
        var machine = Self.machine()
        #expect(machine.tick(now: Self.at(milliseconds: 2_000)) == .ping)
        #expect(machine.tick(now: Self.at(milliseconds: 6_000)) == .ping)
        #expect(machine.tick(now: Self.at(milliseconds: 6_001)) == .close)
        #expect(machine.endReason == "was silent for 6000 ms")
        #expect(machine.expiresOnEnd)
    }

    @Test func anythingHeardKeepsItOpen() {
        var machine = Self.machine()
        for second in stride(from: Int64(2), through: 60, by: 2) {
            machine.heard(now: Self.at(milliseconds: second * 1000 - 100))
            #expect(machine.tick(now: Self.at(milliseconds: second * 1000)) == .ping)
        }
    }

    @Test func requestsThatMakeOthersActHaveABurstThenARate() {
        var machine = Self.machine(burst: 3, perSecond: 2)
        let now = Self.at(milliseconds: 0)
        for index in 0..<3 {
            #expect(
                machine.received(.punchRequest(id: "\(index)", owner: "bob"), now: now)
                    == .punch(id: "\(index)", owner: "bob"))
        }
        // Over the burst: answered 2 at once, nothing done; every kind shares the allowance.
        #expect(
            machine.received(.punchRequest(id: "p", owner: "bob"), now: now)
                == .overRate(.punchReply(id: "p", code: 2, token: "")))
        #expect(
            machine.received(.relayRequest(id: "r", owner: "bob"), now: now)
                == .overRate(.relayReply(id: "r", code: 2, token: "")))
        #expect(
            machine.received(.reverseRequest(id: "v", owner: "bob"), now: now)
                == .overRate(.reverseReply(id: "v", code: 2, token: "")))
        // Half a second later one more (2 a second) is allowed, and then not.
        let later = Self.at(milliseconds: 500)
        #expect(machine.received(.relayRequest(id: "r2", owner: "bob"), now: later) == .relay(id: "r2", owner: "bob"))
        #expect(
            machine.received(.relayRequest(id: "r3", owner: "bob"), now: later)
                == .overRate(.relayReply(id: "r3", code: 2, token: "")))
        // The allowance never grows beyond the burst.
        let muchLater = Self.at(milliseconds: 3_600_000)
        for index in 0..<3 {
            #expect(
                machine.received(.reverseRequest(id: "\(index)", owner: "bob"), now: muchLater)
                    == .reverse(id: "\(index)", owner: "bob"))
        }
        #expect(
            machine.received(.reverseRequest(id: "x", owner: "bob"), now: muchLater)
                == .overRate(.reverseReply(id: "x", code: 2, token: "")))
    }

    @Test func lookupsFasterThanAHundredASecondCloseTheConnection() {
        var machine = Self.machine()
        let now = Self.at(milliseconds: 0)
        for index in 0..<100 {
            #expect(
                machine.received(.whoRequest(id: "\(index)", user: "bob"), now: now)
                    == .answerWho(id: "\(index)", user: "bob"))
            #expect(
                machine.received(.keyRequest(id: "\(index)", user: "bob"), now: now)
                    == .answerKey(id: "\(index)", user: "bob"))
        }
        #expect(machine.received(.whoRequest(id: "x", user: "bob"), now: now) == .close)
        #expect(machine.endReason == "sent WHO requests faster than 100 a second")
        // A hundred a second for ever is fine.
        var steady = Self.machine()
        for tenth in 0..<600 {
            #expect(
                steady.received(.whoRequest(id: "w", user: "bob"), now: Self.at(milliseconds: Int64(tenth) * 100))
                    != .close)
            for _ in 0..<9 {
                #expect(
                    steady.received(.keyRequest(id: "k", user: "bob"), now: Self.at(milliseconds: Int64(tenth) * 100))
                        != .close)
            }
        }
    }

    @Test func theServersOwnMessagesFromAClientAreIgnored() {
        var machine = Self.machine()
        let now = Self.at(milliseconds: 0)
        #expect(machine.received(.ping, now: now) == .none)
        #expect(machine.received(.meet(token: "t"), now: now) == .ignore)
        #expect(machine.received(.dial(token: "t", host: "127.0.0.1", port: "1"), now: now) == .ignore)
        #expect(machine.received(.relayTo(token: "t"), now: now) == .ignore)
    }

    @Test func howItEndsDecidesWhetherTheUserGoesOffline() {
        var quiesced = Self.machine()
        #expect(quiesced.quiesce() == .close)
        #expect(!quiesced.expiresOnEnd)
        var invalid = Self.machine()
        #expect(invalid.invalid() == .close)
        #expect(invalid.expiresOnEnd && invalid.endReason == "sent something invalid")
        var closed = Self.machine()
        #expect(closed.endReason == "closed" && closed.expiresOnEnd)
        struct Reset: Error, CustomStringConvertible { var description: String { "reset" } }
        #expect(closed.failed(Reset()) == .close)
        #expect(closed.endReason == "failed: reset")
    }
}
