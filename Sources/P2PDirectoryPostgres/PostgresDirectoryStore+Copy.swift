import Foundation
import Logging
import P2PDirectory
import P2PProtocol
import PostgresNIO
import Synchronization

// Copying a directory in (`p2p-server copy-directory`).
extension PostgresDirectoryStore {
    /// Writes `contents` into this (empty) directory in one transaction; with `replacing`, what
    /// is there is deleted first. Throws ``PostgresStoreError/notEmpty(users:)`` when the
    /// directory holds users and `replacing` is false: nothing is changed then.
    /// Copies a directory in, a page at a time, in one transaction: nothing of it is kept
    /// unless all of it is. Refuses a directory that already holds users unless `replacing`.
    /// Returns how many users (connected among them) and files were copied.
    public func load(
        from source: any DirectoryContentsSource, replacing: Bool, pageSize: Int = 5_000
    ) async throws -> (users: Int, connected: Int, files: Int) {
        try await transaction { connection in
            if replacing {
                try await connection.query("DELETE FROM directory_user", logger: self.logger)
            } else {
                let rows = try await connection.query("SELECT count(*) FROM directory_user", logger: self.logger)
                for try await users in rows.decode(Int.self) where users > 0 {
                    throw PostgresStoreError.notEmpty(users: users)
                }
            }
            var counts = (users: 0, connected: 0, files: 0)
            // Each page as arrays: one statement per page rather than one per row.
            var lastName: String?
            while true {
                let part = try await source.users(after: lastName, limit: pageSize)
                guard let last = part.last else { break }
                lastName = last.name
                counts.users += part.count
                counts.connected += part.filter { $0.ip != nil }.count
                try await connection.query(
                    """
                    INSERT INTO directory_user (name, ip, port, key)
                    SELECT name, nullif(ip, ''), nullif(port, ''), nullif(key, '')
                    FROM unnest(\(part.map(\.name))::text[], \(part.map { $0.ip ?? "" })::text[],
                        \(part.map { $0.port ?? "" })::text[], \(part.map { $0.key ?? "" })::text[])
                        AS rows (name, ip, port, key)
                    """, logger: self.logger)
            }
            var lastID: Int64 = 0
            while true {
                let (part, last) = try await source.files(after: lastID, limit: pageSize)
                guard !part.isEmpty else { break }
                lastID = last
                counts.files += part.count
                // Ids come back in the order of the rows inserted (WITH ORDINALITY keeps it).
                let rows = try await connection.query(
                    """
                    INSERT INTO directory_file (owner, name, description)
                    SELECT owner, name, description
                    FROM unnest(
                        \(part.map(\.owner))::text[], \(part.map(\.name))::text[], \(part.map(\.description))::text[])
                        WITH ORDINALITY AS rows (owner, name, description, position)
                    ORDER BY position
                    RETURNING id
                    """, logger: self.logger)
                var ids: [Int64] = []
                for try await id in rows.decode(Int64.self) { ids.append(id) }
                ids.sort()
                var wordIDs: [Int64] = []
                var words: [String] = []
                var fileWords: [String] = []
                for (file, id) in zip(part, ids) {
                    let each = Self.searchWords(name: file.name, description: file.description)
                    let column = Self.wordsColumn(each)
                    for word in each {
                        wordIDs.append(id)
                        words.append(word)
                        fileWords.append(column)
                    }
                }
                try await connection.query(
                    """
                    INSERT INTO directory_file_word (word, file_id, offline, words)
                    SELECT w.word, w.id, u.ip IS NULL, w.words
                    FROM unnest(\(words)::text[], \(wordIDs)::bigint[], \(fileWords)::text[]) AS w (word, id, words)
                    JOIN directory_file f ON f.id = w.id JOIN directory_user u ON u.name = f.owner
                    """, logger: self.logger)
            }
            return counts
        }
    }
}
