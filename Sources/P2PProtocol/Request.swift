/// A request from a client to the directory server.
///
/// On the wire: the operation name, the date-time and the operation's arguments, each as
/// UTF-8 bytes followed by one NUL, in the order of PROTOCOL.md section 2.
public struct Request: Sendable, Hashable {
    /// The date-time the client stamped on the request, `DD/MM/YYYY HH:MM:SS`.
    public var dateTime: String
    public var command: Command
    /// Extension: the proof that the request comes from the holder of the user's key, sent
    /// before it (``RequestProof``); nil for a plain request, the only kind the spec knows.
    public var proof: RequestProof?

    public init(dateTime: String, command: Command, proof: RequestProof? = nil) {
        self.dateTime = dateTime
        self.command = command
        self.proof = proof
    }

    /// What is asked, with its arguments.
    public enum Command: Sendable, Hashable {
        case register(user: String)
        case unregister(user: String)
        /// `port` is kept as sent: the server, not the decoder, decides whether it is valid.
        case connect(user: String, port: String)
        case disconnect(user: String)
        case publish(user: String, fileName: String, description: String)
        case delete(user: String, fileName: String)
        case listUsers(user: String)
        case listContent(user: String, owner: String)
        /// Extension (docs/PROTOCOL.md): the requesting user and the query text.
        case search(user: String, query: String)
        /// Extension (docs/PROTOCOL.md, "control connection"): the connected user whose
        /// control connection this becomes.
        case control(user: String)
        /// Extension: `user` shows the server the socket it will punch from, for the punch
        /// `token` names.
        case rendezvous(user: String, token: String)
        /// Extension: `user`'s side of the relayed transfer `token`.
        case relay(user: String, token: String)
        /// Extension: `user` opens a keyed session (``DirectoryOperation/identify``). Keys and
        /// the signature are base64.
        case identify(user: String, publicKey: String, agreementKey: String, signature: String)
    }

    public var operation: DirectoryOperation {
        switch command {
        case .register: return .register
        case .unregister: return .unregister
        case .connect: return .connect
        case .disconnect: return .disconnect
        case .publish: return .publish
        case .delete: return .delete
        case .listUsers: return .listUsers
        case .listContent: return .listContent
        case .search: return .search
        case .control: return .control
        case .rendezvous: return .rendezvous
        case .relay: return .relay
        case .identify: return .identify
        }
    }

    /// The user the request acts for (the requester for the list operations).
    public var user: String {
        switch command {
        case .register(let user), .unregister(let user), .connect(let user, _), .disconnect(let user),
            .publish(let user, _, _), .delete(let user, _), .listUsers(let user), .listContent(let user, _),
            .search(let user, _), .control(let user), .rendezvous(let user, _),
            .relay(let user, _), .identify(let user, _, _, _):
            return user
        }
    }

    /// The file name for PUBLISH and DELETE, nil otherwise.
    public var fileName: String? {
        switch command {
        case .publish(_, let fileName, _), .delete(_, let fileName): return fileName
        default: return nil
        }
    }

    /// The fields in wire order, operation name first.
    public var fields: [String] {
        var fields = [operation.rawValue, dateTime]
        switch command {
        case .register(let user), .unregister(let user), .disconnect(let user), .listUsers(let user),
            .control(let user):
            fields.append(user)
        case .connect(let user, let port):
            fields += [user, port]
        case .publish(let user, let fileName, let description):
            fields += [user, fileName, description]
        case .delete(let user, let fileName):
            fields += [user, fileName]
        case .listContent(let user, let owner):
            fields += [user, owner]
        case .search(let user, let query):
            fields += [user, query]
        case .rendezvous(let user, let token), .relay(let user, let token):
            fields += [user, token]
        case .identify(let user, let publicKey, let agreementKey, let signature):
            fields += [user, publicKey, agreementKey, signature]
        }
        return fields
    }

    /// Builds a request from its fields in wire order; nil when the count does not match.
    init?(operation: DirectoryOperation, arguments: [String]) {
        guard arguments.count == operation.argumentCount else { return nil }
        let dateTime = arguments[0]
        let args = arguments.dropFirst()
        let a = Array(args)
        let command: Command
        switch operation {
        case .register: command = .register(user: a[0])
        case .unregister: command = .unregister(user: a[0])
        case .connect: command = .connect(user: a[0], port: a[1])
        case .disconnect: command = .disconnect(user: a[0])
        case .publish: command = .publish(user: a[0], fileName: a[1], description: a[2])
        case .delete: command = .delete(user: a[0], fileName: a[1])
        case .listUsers: command = .listUsers(user: a[0])
        case .listContent: command = .listContent(user: a[0], owner: a[1])
        case .search: command = .search(user: a[0], query: a[1])
        case .control: command = .control(user: a[0])
        case .rendezvous: command = .rendezvous(user: a[0], token: a[1])
        case .relay: command = .relay(user: a[0], token: a[1])
        case .identify: command = .identify(user: a[0], publicKey: a[1], agreementKey: a[2], signature: a[3])
        }
        self.init(dateTime: dateTime, command: command)
    }
}
