import Foundation
import Logging
import P2PProtocol

/// A read of the directory: what LIST_USERS and LIST_CONTENT ask.
public enum DirectoryQuery: Sendable, Hashable {
    case listUsers(requester: String)
    case listContent(requester: String, owner: String)
    /// Extension: the files whose name or description match every word of `query`
    /// (``DirectoryRules/searchWords(_:)``), online owners first, at most
    /// ``DirectoryRules/maxSearchHits``. Codes as LIST_USERS; an empty query is 3.
    case search(requester: String, query: String)

    public var operation: DirectoryOperation {
        switch self {
        case .listUsers: return .listUsers
        case .listContent: return .listContent
        case .search: return .search
        }
    }
}

/// Where the directory lives: the one interface the server, the connection handler and the
/// rule tests use. An implementation decides every change by the rules of PROTOCOL.md
/// section 2 (``DirectoryState`` is those rules as plain values, and the shared rule suite in
/// the tests holds every implementation to them) and keeps what it answered 0.
///
/// Work comes in batches, in arrival order: a batch of changes is everything the server read
/// in one pass of an event loop, so an implementation can make the whole batch durable with
/// one commit (group commit) and still give each change its own code, exactly as if the
/// changes had come one after another.
///
/// The server calls the completion forms of ``apply(_:completion:)`` and
/// ``read(_:completion:)``: by default they run the async methods in a task, and a store whose
/// work runs on threads of its own (as SQLite's does) implements them directly, which spares a
/// task and two thread hops per batch (at 64 clients, twice the throughput in `make bench`).
///
/// The protocol is split by who needs what: this one is what the server needs of every store
/// (seven requirements: the changes, the reads, a user's presence and key, the session secret,
/// closing; the rest has defaults); ``DirectoryInspection`` is what the web page, the peer
/// checks and `copy-directory` read; ``DirectoryCoordination`` is what only a store several
/// servers share has to do (control leases, shared peer checks, passing control messages), all
/// with defaults for a store one server uses.
///
/// To add a store: implement ``DirectoryStore`` and ``DirectoryInspection`` in a module of its
/// own (as P2PDirectorySQLite and P2PDirectoryPostgres do), make the server's `--store` option
/// open it (a case of `DirectoryStoreLocation` in P2PDirectoryStores), and add it to the list
/// of stores the rule suite runs on.
public protocol DirectoryStore: DirectoryInspection, DirectoryCoordination, Sendable {
    /// Applies `changes` in order and returns their result codes, in the same order, once
    /// every change that got 0 is durable (a crash or power loss right after cannot undo it).
    /// A change that cannot be made durable (the database fails) gets its operation's "other"
    /// code and changes nothing.
    func apply(_ changes: [DirectoryChange]) async -> [P2PProtocol.ResultCode]

    /// Answers `queries`, in the same order, from what is durable: never a change that was not
    /// yet answered, never missing one that was. A failure gives the operation's "other" code.
    func read(_ queries: [DirectoryQuery]) async -> [Reply]

    /// Whether `user` is registered, and connected at which address, whoever asks (for the
    /// control connection, which belongs to a connected user and its address).
    func presence(of user: String) async throws -> Presence

    /// The key `user` is bound to (docs/PROTOCOL.md, "Keys"); nil while unbound or unknown
    /// (for the control connection's admission, and for downloaders asking whom to expect).
    func boundKey(of user: String) async throws -> String?

    /// Unbinds `user` from its key, for its owner who lost the key (the operator's
    /// `p2p-server unbind`): its next keyed CONNECT binds the new one. False when there is no
    /// such user.
    func unbind(_ user: String) async throws -> Bool

    /// The secret keyed sessions are sealed with (``KeyedSessions``): 32 random bytes in base64,
    /// made by the first server to ask and the same for every server sharing the directory, so
    /// that any of them verifies a session another opened.
    func sessionSecret() async throws -> String

    /// Finishes what is in flight and releases the store. Later calls fail with "other" codes.
    func close() async throws

    /// A number that grows with every commit that changes the directory, before any of its
    /// changes is answered. Read before a batch of reads is submitted, it tells how long their
    /// replies stay true: until a change affects them (``changes(since:)``), the same query
    /// gets the same reply, so the server answers it again from memory (``StoreBatcher``).
    /// Has a default: nil, the store cannot tell (as when other servers change the same
    /// database), and every read goes to the store.
    var directoryVersion: UInt64? { get }

    /// What the commits after `version` changed, through the version returned; nil changes
    /// when the store cannot tell (everything remembered is then forgotten). Has a default
    /// that cannot tell. A store keeps a ``DirectoryChangeJournal`` for both.
    func changes(since version: UInt64) -> (through: UInt64, changes: DirectoryChanges?)

    /// ``apply(_:)-(Array<DirectoryChange>)``, calling `completion` (on any thread) instead of
    /// returning. Has a default.
    func apply(_ changes: [DirectoryChange], completion: @escaping @Sendable ([P2PProtocol.ResultCode]) -> Void)

    /// ``read(_:)-(Array<DirectoryQuery>)``, calling `completion` (on any thread) instead of
    /// returning. Has a default.
    func read(_ queries: [DirectoryQuery], completion: @escaping @Sendable ([Reply]) -> Void)
}

/// What the directory holds, read whole for those who look at it rather than use it: the web
/// page, the peer checks, `copy-directory`, operators and tests. Every store implements it.
public protocol DirectoryInspection: Sendable {
    /// Every registered user's name, sorted (for operators and tests: it grows with the
    /// directory).
    func registeredUsers() async throws -> [String]

    /// Every connected user with its address, sorted by name, whoever asks (for the server's
    /// own peer checks and its web page).
    func connectedUsers() async throws -> [ConnectedUser]

    /// How many users, connected users and files there are (for the web page).
    func overview() async throws -> DirectoryOverview

    /// `owner`'s files in publishing order, whoever asks; nil when there is no such user (for
    /// the web page).
    func files(of owner: String) async throws -> [PublishedFile]?

    /// SEARCH whoever asks: the hits for `query`, as ``DirectoryQuery/search(requester:query:)``
    /// gives them to a connected user (for the web page).
    func search(_ query: String) async throws -> [SearchHit]
}

/// What a store several servers share does so that they act as one: leases on control
/// connections, the peer checks shared out, control messages passed to the server that holds
/// a user's control connection. Every requirement has a default for a store one server uses.
public protocol DirectoryCoordination: Sendable {
    /// Records that these connected users' control connections are open on this server until
    /// `until`: the peer checks of every server sharing the directory leave them alone until then
    /// (the holder renews it while they stay open). Has a default that records nothing.
    func holdControl(_ users: [ConnectedUser], until: Date) async throws

    /// The connected users this server's peer checks should try this round: those no server
    /// holds a control connection for (``holdControl(_:until:)``) and no other server has
    /// claimed for its own checks, up to this server's share of them when several check. The
    /// users returned are claimed for `checker` for `lease` seconds (a server keeps claiming
    /// its own, so each user is checked by one server per round, and the failures in a row are
    /// counted by that one). Has a default: every connected user (a store only one server uses).
    func usersToCheck(checker: String, lease: TimeInterval) async throws -> [ConnectedUser]

    /// `checker` stops checking for good (its server is shutting down): its claims are given
    /// back and it no longer counts among the servers sharing the checks, so that the others
    /// take its users at their next round instead of when its claims run out. Has a default
    /// that does nothing.
    func stopChecking(checker: String) async throws

    /// Whether some server sharing the directory holds `user`'s control connection now (its
    /// lease has not run out). Has a default: false.
    func isControlHeld(_ user: String) async throws -> Bool

    /// Passes a control message (its fields, ``ControlMessage/fields``) to whichever server
    /// sharing the directory holds `user`'s control connection. Has a default that passes
    /// nothing (a store only one server uses).
    func forwardControl(_ fields: [String], to user: String) async throws

    /// Passes a message between servers (its fields, ``ClusterMessage/fields``) to the server
    /// sharing the directory whose id is `server` (``ControlSessions/serverID``). Has a default
    /// that passes nothing.
    func forwardControl(_ fields: [String], toServer server: String) async throws

    /// Runs `deliver` with each message another server passed on (whom it is for, its fields),
    /// until cancelled. Every server may see every message: each takes those for its users and
    /// for itself. Has a default that returns at once.
    func receiveForwardedControl(_ deliver: @escaping @Sendable (ControlAddressee, [String]) -> Void) async throws
}

/// Whom a message passed between the servers sharing a directory is for.
public enum ControlAddressee: Sendable, Hashable {
    /// The server holding this user's control connection: a control message to send on it.
    case user(String)
    /// The server with this id: a ``ClusterMessage``.
    case server(String)
}

/// The size of the directory.
public struct DirectoryOverview: Sendable, Hashable {
    public var users: Int
    public var connectedUsers: Int
    public var files: Int

    public init(users: Int, connectedUsers: Int, files: Int) {
        self.users = users
        self.connectedUsers = connectedUsers
        self.files = files
    }
}

/// A store one server uses has nothing to coordinate: that server knows its own control
/// connections and checks every connected user.
extension DirectoryCoordination {
    public func holdControl(_ users: [ConnectedUser], until: Date) async throws {}

    public func stopChecking(checker: String) async throws {}

    public func isControlHeld(_ user: String) async throws -> Bool { false }

    public func forwardControl(_ fields: [String], to user: String) async throws {}

    public func forwardControl(_ fields: [String], toServer server: String) async throws {}

    public func receiveForwardedControl(
        _ deliver: @escaping @Sendable (ControlAddressee, [String]) -> Void
    ) async throws {}
}

extension DirectoryCoordination where Self: DirectoryInspection {
    public func usersToCheck(checker: String, lease: TimeInterval) async throws -> [ConnectedUser] {
        try await connectedUsers()
    }
}

extension DirectoryStore {
    public var directoryVersion: UInt64? { nil }

    public func changes(since version: UInt64) -> (through: UInt64, changes: DirectoryChanges?) {
        (directoryVersion ?? 0, nil)
    }

    /// Runs the async form in a task.
    public func apply(
        _ changes: [DirectoryChange], completion: @escaping @Sendable ([P2PProtocol.ResultCode]) -> Void
    ) {
        Task { completion(await apply(changes)) }
    }

    /// Runs the async form in a task.
    public func read(_ queries: [DirectoryQuery], completion: @escaping @Sendable ([Reply]) -> Void) {
        Task { completion(await read(queries)) }
    }

    /// Applies one change; see ``apply(_:)-(Array<DirectoryChange>)``.
    public func apply(_ change: DirectoryChange) async -> P2PProtocol.ResultCode {
        await apply([change])[0]
    }

    /// Answers one query.
    public func read(_ query: DirectoryQuery) async -> Reply {
        await read([query])[0]
    }
}

/// Where a directory is kept and how to open its store: `DirectoryStoreLocation` (module
/// P2PDirectoryStores) names the stores `p2p-server` has, each in a module of its own.
public protocol DirectoryStoreOpener: Sendable, CustomStringConvertible {
    /// Opens the store, creating (or migrating) its schema if needed.
    func open(logger: Logger, metrics: DirectoryMetrics) async throws -> any DirectoryStore
}
