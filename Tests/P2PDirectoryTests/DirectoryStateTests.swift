import P2PProtocol
import Testing

@testable import P2PDirectory

/// The rules as plain values: a sequence of changes and the code each gets.
@Suite struct DirectoryStateTests {
    func codes(_ changes: [DirectoryChange], on state: inout DirectoryState) -> [UInt8] {
        changes.map { state.apply($0).rawValue }
    }

    @Test func lifecycleOfAUser() {
        var state = DirectoryState()
        let codes = codes(
            [
                .register(user: "a"), .register(user: "a"), .publish(user: "a", fileName: "f", description: "d"),
                .connect(user: "a", ip: "10.0.0.1", port: "70000"), .connect(user: "a", ip: "10.0.0.1", port: "4000"),
                .connect(user: "a", ip: "10.0.0.1", port: "4001"), .publish(user: "a", fileName: "f", description: "d"),
                .publish(user: "a", fileName: "f", description: "d"), .delete(user: "a", fileName: "g"),
                .disconnect(user: "a"), .disconnect(user: "a"), .unregister(user: "a"), .unregister(user: "a"),
            ], on: &state)
        #expect(codes == [0, 1, 2, 3, 0, 2, 0, 3, 3, 0, 2, 0, 1])
        #expect(state.userCount == 0)
    }

    @Test func listsFollowTheState() {
        var state = DirectoryState()
        _ = codes(
            [
                .register(user: "zed"), .register(user: "amy"), .register(user: "bob"),
                .connect(user: "zed", ip: "1.1.1.1", port: "1"), .connect(user: "amy", ip: "2.2.2.2", port: "2"),
                .publish(user: "zed", fileName: "b", description: "second"),
                .publish(user: "zed", fileName: "a", description: "first?"),
            ], on: &state)
        #expect(
            state.listUsers(requester: "amy")
                == .users([
                    ConnectedUser(name: "amy", ip: "2.2.2.2", port: "2"),
                    ConnectedUser(name: "zed", ip: "1.1.1.1", port: "1"),
                ]))
        #expect(state.listUsers(requester: "bob") == .status(2))
        #expect(state.listUsers(requester: "nobody") == .status(1))
        #expect(
            state.listContent(requester: "amy", owner: "zed")
                == .content([
                    PublishedFile(name: "b", description: "second"), PublishedFile(name: "a", description: "first?"),
                ]))
        #expect(state.listContent(requester: "amy", owner: "bob") == .content([]))
        #expect(state.listContent(requester: "amy", owner: "nobody") == .status(3))
        // Unregistering a connected user takes it off the connected list too.
        _ = state.apply(.unregister(user: "zed"))
        #expect(state.listUsers(requester: "amy") == .users([ConnectedUser(name: "amy", ip: "2.2.2.2", port: "2")]))
    }
}
