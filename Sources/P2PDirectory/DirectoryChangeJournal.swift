import Synchronization

/// What changes made to the directory, as far as the replies to LIST_USERS and LIST_CONTENT
/// go: the users whose registration or connection changed, the owners whose files changed,
/// and whether the list of connected users (or an address in it) did.
public struct DirectoryChanges: Sendable, Hashable {
    public var users: Set<String> = []
    public var owners: Set<String> = []
    public var connectedUsers = false

    public init() {}

    public var isEmpty: Bool { users.isEmpty && owners.isEmpty && !connectedUsers }

    /// Adds what `change` changed (it was answered 0).
    public mutating func add(_ change: DirectoryChange) {
        switch change {
        case .register(let user):
            users.insert(user)
        case .unregister(let user, _):
            // Its files go with it, and a connected user leaves the list.
            users.insert(user)
            owners.insert(user)
            connectedUsers = true
        case .connect(let user, _, _), .disconnect(let user, _), .expire(let user, _, _):
            users.insert(user)
            connectedUsers = true
        case .publish(let user, _, _, _), .delete(let user, _, _):
            owners.insert(user)
        case .keyed(let change, _):
            add(change)
        }
    }

    public mutating func formUnion(_ other: DirectoryChanges) {
        users.formUnion(other.users)
        owners.formUnion(other.owners)
        connectedUsers = connectedUsers || other.connectedUsers
    }

    /// Whether the reply to `query` can differ after these changes. A LIST_USERS depends on
    /// whether its requester is registered and connected, and on the connected users; a
    /// LIST_CONTENT on the requester and the owner being registered and connected, and on the
    /// owner's files; a SEARCH on any file, so always.
    public func affect(_ query: DirectoryQuery) -> Bool {
        switch query {
        case .listUsers(let requester):
            return connectedUsers || users.contains(requester)
        case .listContent(let requester, let owner):
            return users.contains(requester) || users.contains(owner) || owners.contains(owner)
        case .search:
            return true
        }
    }
}

/// A store's version (``DirectoryStore/directoryVersion``) and what its last commits changed
/// (``DirectoryStore/changes(since:)``), for a store that alone changes its database.
public final class DirectoryChangeJournal: Sendable {
    /// How many commits back ``changes(since:)`` can tell (a reader further behind forgets
    /// everything it remembered).
    public static let kept = 256

    private struct State {
        var version: UInt64 = 0
        var recent: [(version: UInt64, changes: DirectoryChanges)] = []
    }

    private let state = Mutex(State())
    /// The version, also readable without the lock.
    private let current = Atomic<UInt64>(0)

    public init() {}

    public var version: UInt64 { current.load(ordering: .acquiring) }

    /// Records what a commit changed; call it after the commit and before answering its
    /// changes. A commit that changed nothing keeps the version.
    public func record(_ changes: DirectoryChanges) {
        guard !changes.isEmpty else { return }
        state.withLock { state in
            state.version += 1
            state.recent.append((state.version, changes))
            if state.recent.count >= 2 * Self.kept { state.recent.removeFirst(state.recent.count - Self.kept) }
            current.store(state.version, ordering: .releasing)
        }
    }

    /// What changed after `version`, through the version returned; nil changes when the
    /// journal no longer goes back that far.
    public func changes(since version: UInt64) -> (through: UInt64, changes: DirectoryChanges?) {
        state.withLock { state in
            guard version < state.version else { return (state.version, DirectoryChanges()) }
            guard let oldest = state.recent.first, oldest.version <= version + 1 else { return (state.version, nil) }
            var changes = DirectoryChanges()
            for entry in state.recent.reversed() {
                if entry.version <= version { break }
                changes.formUnion(entry.changes)
            }
            return (state.version, changes)
        }
    }
}
