import NIOCore
import Testing

@testable import P2PDirectory

/// The pairing of a punch's or a relay's two sides by their token, as event and action
/// sequences: no sockets, no clock (the tests pass the time).
@Suite struct TokenPairingTests {
    typealias Pairing = TokenPairing<String>
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static func at(_ seconds: Int64) -> NIODeadline { start + .seconds(seconds) }

    static func table(_ repeats: Pairing.Repeat = .replaces) -> Pairing {
        var table = Pairing(repeats: repeats)
        table.create(token: "t", owner: "bob", downloader: "alice", expires: at(30))
        return table
    }

    @Test func theFirstSideWaitsAndTheSecondPairsThem() {
        var table = Self.table()
        guard case .wait(replaced: nil) = table.arrive(token: "t", user: "alice", side: "a1", givesUp: Self.at(5))
        else {
            Issue.record("the first side should wait")
            return
        }
        guard
            case .pair(let waiting, let pairing) = table.arrive(
                token: "t", user: "bob", side: "b1", givesUp: Self.at(5))
        else {
            Issue.record("the second side should pair them")
            return
        }
        #expect(waiting == "a1")
        #expect(pairing.owner == "bob" && pairing.downloader == "alice")
        // Paired pairings leave the table and their users' counts.
        #expect(table.count == 0 && !table.contains("t"))
        #expect(table.pending(involving: "alice") == 0 && table.pending(involving: "bob") == 0)
        guard case .refuse = table.arrive(token: "t", user: "alice", side: "a2", givesUp: Self.at(5)) else {
            Issue.record("a completed token is not used twice")
            return
        }
    }

    @Test func strangersAndUnknownTokensAreRefused() {
        var table = Self.table()
        guard case .refuse = table.arrive(token: "t", user: "mallory", side: "m", givesUp: Self.at(5)) else {
            Issue.record("a user not in the pairing is refused")
            return
        }
        guard case .refuse = table.arrive(token: "nope", user: "alice", side: "a", givesUp: Self.at(5)) else {
            Issue.record("an unknown token is refused")
            return
        }
        // Neither touched the pairing: its two users still pair.
        _ = table.arrive(token: "t", user: "alice", side: "a", givesUp: Self.at(5))
        guard case .pair(let waiting, _) = table.arrive(token: "t", user: "bob", side: "b", givesUp: Self.at(5)) else {
            Issue.record("the real sides should still pair")
            return
        }
        #expect(waiting == "a")
    }

    @Test func aSideComingAgainReplacesItselfForPunches() {
        var table = Self.table(.replaces)
        _ = table.arrive(token: "t", user: "alice", side: "a1", givesUp: Self.at(5))
        guard case .wait(replaced: "a1") = table.arrive(token: "t", user: "alice", side: "a2", givesUp: Self.at(6))
        else {
            Issue.record("the new connection replaces the old")
            return
        }
        guard case .pair(let waiting, _) = table.arrive(token: "t", user: "bob", side: "b", givesUp: Self.at(6)) else {
            Issue.record("the other side pairs with the new connection")
            return
        }
        #expect(waiting == "a2")
    }

    @Test func aSideComingAgainIsRefusedForRelays() {
        var table = Self.table(.isRefused)
        _ = table.arrive(token: "t", user: "alice", side: "a1", givesUp: .distantFuture)
        guard case .refuse = table.arrive(token: "t", user: "alice", side: "a2", givesUp: .distantFuture) else {
            Issue.record("a second connection of one side is refused")
            return
        }
        guard case .pair(let waiting, _) = table.arrive(token: "t", user: "bob", side: "b", givesUp: .distantFuture)
        else {
            Issue.record("the first connection still pairs")
            return
        }
        #expect(waiting == "a1")
    }

    @Test func aWaitingSideGivesUpAndThePairingStaysForAnotherTry() {
        var table = Self.table()
        _ = table.arrive(token: "t", user: "alice", side: "a1", givesUp: Self.at(5))
        #expect(table.expire(token: "t", now: Self.at(4)) == nil)
        guard case .gaveUp("a1") = table.expire(token: "t", now: Self.at(5)) else {
            Issue.record("the side gives up at its time")
            return
        }
        #expect(table.contains("t"))
        // A side that came again later is not ended by the first one's timer.
        _ = table.arrive(token: "t", user: "alice", side: "a2", givesUp: Self.at(12))
        #expect(table.expire(token: "t", now: Self.at(7)) == nil)
        guard case .pair(let waiting, _) = table.arrive(token: "t", user: "bob", side: "b", givesUp: Self.at(12)) else {
            Issue.record("the pairing completes on the second try")
            return
        }
        #expect(waiting == "a2")
    }

    @Test func aPairingNobodyCompletesExpiresWithItsWaitingSide() {
        var table = Self.table()
        _ = table.arrive(token: "t", user: "alice", side: "a", givesUp: .distantFuture)
        #expect(table.expire(token: "t", now: Self.at(29)) == nil)
        guard case .pairingExpired(let pairing, waiting: "a") = table.expire(token: "t", now: Self.at(30)) else {
            Issue.record("the pairing expires with its waiting side")
            return
        }
        #expect(pairing.owner == "bob")
        #expect(table.count == 0 && table.pending(involving: "alice") == 0)
        #expect(table.expire(token: "t", now: Self.at(31)) == nil)
    }

    @Test func pendingPairingsAreCountedPerUser() {
        var table = Pairing(repeats: .replaces)
        table.create(token: "1", owner: "bob", downloader: "alice", expires: Self.at(30))
        table.create(token: "2", owner: "bob", downloader: "carol", expires: Self.at(30))
        table.create(token: "3", owner: "dave", downloader: "dave", expires: Self.at(30))
        #expect(table.pending(involving: "bob") == 2)
        #expect(table.pending(involving: "alice") == 1)
        // A user on both sides counts once.
        #expect(table.pending(involving: "dave") == 1)
        _ = table.expire(token: "1", now: Self.at(30))
        #expect(table.pending(involving: "bob") == 1 && table.pending(involving: "alice") == 0)
        #expect(table.count == 2)
    }

    @Test func grantsCarryTheReplysFields() {
        #expect(TokenGrant.granted(token: "abc").code == 0)
        #expect(TokenGrant.granted(token: "abc").token == "abc")
        #expect(TokenGrant.refused(code: 2).code == 2)
        #expect(TokenGrant.refused(code: 1).token == "")
    }
}
