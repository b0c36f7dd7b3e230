import Foundation
import Logging
import P2PDirectory
import P2PProtocol
import PostgresNIO
import Synchronization

// Reads: LIST_USERS, LIST_CONTENT and SEARCH for the connected users who ask.
extension PostgresDirectoryStore {
    /// A batch's LIST_CONTENTs as one statement (``listContents(_:on:)``), every other query on
    /// a connection of its own, all at once (up to the pool's size): reads need no transaction.
    /// In `make bench`, LIST_CONTENT at 64 clients went from 0.55 of pgbench's rate on the same
    /// SQL (the batch's queries one after another on one connection, three statements each)
    /// to 0.86.
    public func read(_ queries: [DirectoryQuery]) async -> [Reply] {
        guard !queries.isEmpty else { return [] }
        guard !isClosed else { return queries.map { .status($0.operation.otherErrorCode) } }
        // One deadline for the batch: past it, every query still unanswered gets its code.
        let answers: [Result<Reply, any Error>?]
        do {
            answers = try await Self.withDeadline(settings.timeout) {
                await withTaskGroup(of: [(Int, Result<Reply, any Error>)].self) { group in
                    // The LIST_CONTENTs together, as one statement; each other query alone.
                    let contents = queries.indices.filter { if case .listContent = queries[$0] { true } else { false } }
                    var parts = queries.indices.filter { !contents.contains($0) }.map { [$0] }
                    if !contents.isEmpty { parts.append(contents) }
                    for part in parts {
                        group.addTask {
                            do {
                                let replies = try await self.client.withConnection { connection in
                                    part.count == 1
                                        ? [try await self.answer(queries[part[0]], on: connection)]
                                        : try await self.listContents(part.map { queries[$0] }, on: connection)
                                }
                                return zip(part, replies).map { ($0, .success($1)) }
                            } catch {
                                return part.map { ($0, .failure(error)) }
                            }
                        }
                    }
                    var answers = [Result<Reply, any Error>?](repeating: nil, count: queries.count)
                    for await part in group {
                        for (index, answer) in part { answers[index] = answer }
                    }
                    return answers
                }
            }
        } catch {
            answers = queries.map { _ in .failure(error) }
        }
        var replies: [Reply] = []
        for (query, answer) in zip(queries, answers) {
            switch answer {
            case .success(let reply)?:
                replies.append(reply)
            case .failure(let error)?:
                failed(error, doing: "\(query.operation.rawValue) refused")
                replies.append(.status(query.operation.otherErrorCode))
            case nil:
                replies.append(.status(query.operation.otherErrorCode))
            }
        }
        if answers.contains(where: { if case .success? = $0 { true } else { false } }) { succeeded() }
        return replies
    }

    /// LIST_USERS and LIST_CONTENT are one statement each (the requester's row joined with
    /// what it asks for): one round trip rather than three (pgbench ran LIST_CONTENT's one
    /// statement about 5,600 times a second here, its three 3,500 to 4,400 times).
    func answer(_ query: DirectoryQuery, on connection: PostgresConnection) async throws -> Reply {
        switch query {
        case .listUsers(let requester):
            let rows = try await connection.query(
                """
                SELECT r.name IS NOT NULL, r.ip IS NOT NULL, u.name, u.ip, u.port
                FROM (VALUES (1)) AS one (x)
                LEFT JOIN directory_user r ON r.name = \(requester)
                LEFT JOIN directory_user u ON u.ip IS NOT NULL AND r.ip IS NOT NULL
                ORDER BY u.name
                """, logger: logger)
            var users: [ConnectedUser] = []
            for try await (exists, connected, name, ip, port) in rows.decode(
                (Bool, Bool, String?, String?, String?).self)
            {
                if let code = DirectoryRules.requesterCode(registered: exists, connected: connected) {
                    return .status(code)
                }
                if let name, let ip, let port { users.append(ConnectedUser(name: name, ip: ip, port: port)) }
            }
            return .users(users)

        case .listContent(let requester, let owner):
            let rows = try await connection.query(
                """
                SELECT r.name IS NOT NULL, r.ip IS NOT NULL, o.name IS NOT NULL, f.name, f.description
                FROM (VALUES (1)) AS one (x)
                LEFT JOIN directory_user r ON r.name = \(requester)
                LEFT JOIN directory_user o ON o.name = \(owner)
                LEFT JOIN directory_file f ON f.owner = o.name AND r.ip IS NOT NULL
                ORDER BY f.id
                """, logger: logger)
            var files: [PublishedFile] = []
            for try await (exists, connected, ownerExists, name, description) in rows.decode(
                (Bool, Bool, Bool, String?, String?).self)
            {
                if let code = DirectoryRules.requesterCode(registered: exists, connected: connected) {
                    return .status(code)
                }
                guard ownerExists else { return .status(DirectoryRules.unknownOwnerCode) }
                if let name, let description { files.append(PublishedFile(name: name, description: description)) }
            }
            return .content(files)

        case .search(let requester, let text):
            if let empty = DirectoryRules.emptySearchCode(text) {
                let connected = try await presence(of: requester, connection)
                return .status(
                    DirectoryRules.requesterCode(registered: connected != nil, connected: connected == true) ?? empty)
            }
            switch try await search(text, requester: requester, connection) {
            case .refused(let code): return .status(code)
            case .hits(let hits): return .hits(hits)
            }
        }
    }

    /// Several LIST_CONTENTs in one statement (the single one's, for a list of requester and
    /// owner pairs): one round trip for a batch.
    func listContents(_ queries: [DirectoryQuery], on connection: PostgresConnection) async throws -> [Reply] {
        var requesters: [String] = []
        var owners: [String] = []
        for case .listContent(let requester, let owner) in queries {
            requesters.append(requester)
            owners.append(owner)
        }
        let rows = try await connection.query(
            """
            SELECT q.i, r.name IS NOT NULL, r.ip IS NOT NULL, o.name IS NOT NULL, f.name, f.description
            FROM unnest(\(requesters)::text[], \(owners)::text[]) WITH ORDINALITY AS q (requester, owner, i)
            LEFT JOIN directory_user r ON r.name = q.requester
            LEFT JOIN directory_user o ON o.name = q.owner
            LEFT JOIN directory_file f ON f.owner = o.name AND r.ip IS NOT NULL
            ORDER BY q.i, f.id
            """, logger: logger)
        var codes = [ResultCode](repeating: .ok, count: requesters.count)
        var files = [[PublishedFile]](repeating: [], count: requesters.count)
        for try await (position, exists, connected, ownerExists, name, description) in rows.decode(
            (Int, Bool, Bool, Bool, String?, String?).self)
        {
            let index = position - 1
            codes[index] =
                DirectoryRules.requesterCode(registered: exists, connected: connected)
                ?? (ownerExists ? .ok : DirectoryRules.unknownOwnerCode)
            if let name, let description { files[index].append(PublishedFile(name: name, description: description)) }
        }
        return zip(codes, files).map { code, files in code == .ok ? .content(files) : .status(code) }
    }

    /// nil when `user` is not registered, else whether it is connected.
    func presence(of user: String, _ connection: PostgresConnection) async throws -> Bool? {
        let rows = try await connection.query("SELECT ip FROM directory_user WHERE name = \(user)", logger: logger)
        for try await ip in rows.decode(String?.self) { return ip != nil }
        return nil
    }

    func connectedUsers(_ connection: PostgresConnection) async throws -> [ConnectedUser] {
        let rows = try await connection.query(
            "SELECT name, ip, port FROM directory_user WHERE ip IS NOT NULL ORDER BY name", logger: logger)
        var users: [ConnectedUser] = []
        for try await (name, ip, port) in rows.decode((String, String, String).self) {
            users.append(ConnectedUser(name: name, ip: ip, port: port))
        }
        return users
    }

    func files(of owner: String, _ connection: PostgresConnection) async throws -> [PublishedFile] {
        let rows = try await connection.query(
            "SELECT name, description FROM directory_file WHERE owner = \(owner) ORDER BY id", logger: logger)
        var files: [PublishedFile] = []
        for try await (name, description) in rows.decode((String, String).self) {
            files.append(PublishedFile(name: name, description: description))
        }
        return files
    }
}
