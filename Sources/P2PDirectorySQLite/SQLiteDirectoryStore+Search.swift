import P2PDirectory
import Foundation
import GRDB
import Logging
import P2POperationLog
import P2PProtocol
import Synchronization

// SEARCH: the full-text index and the search bitmaps.
extension SQLiteDirectoryStore {
    /// SEARCH through the full-text index: the online owners' hits first, then the others',
    /// each in publishing order (the index answers in rowid order, which is publishing order,
    /// so nothing is sorted).
    ///
    /// With the bitmaps (see `SearchBitmaps`): the index is asked only for the words without
    /// one, each id it gives is tested in the other words' bitmaps and in the online one; when
    /// every word has a bitmap, the index is not read at all. Until the bitmaps are built
    /// (during the first searches), the index and SQL alone.
    static func search(_ query: String, in db: Database, bitmaps: SearchBitmaps?) throws -> [SearchHit] {
        var words: [String] = []
        for word in DirectoryRules.searchWords(query) where !words.contains(word) { words.append(word) }
        let found = bitmaps?.bitmaps(for: words) ?? SearchBitmaps.Found()
        func match(_ words: [String]) throws -> String {
            try words.map { try matchExpression(forPrefix: $0, in: db) }.joined(separator: " AND ")
        }
        let tested = words.compactMap { found.prefixes[$0] }
        let asked = words.filter { found.prefixes[$0] == nil }
        // A word whose bitmap is being built is frequent: reading its list from the index and
        // testing the others' bitmaps would cost more than the index's own AND.
        guard let online = found.online, !asked.contains(where: found.building.contains) else {
            return try search(match: match(words), in: db)
        }
        if asked.isEmpty {
            // The intersection of the bitmaps. (A file deleted after this read began may be
            // missing from the answer.)
            return try search(online: online, in: db) { take in FileBitmap.forEachInAll(tested, take) }
        }
        let expression = try match(asked)
        return try search(online: online, in: db) { take in
            let ids = try Int64.fetchCursor(
                db.cachedStatement(sql: "SELECT rowid FROM file_search WHERE file_search MATCH ?1 ORDER BY rowid"),
                arguments: [expression])
            while let id = try ids.next() {
                if tested.allSatisfy({ $0.contains(id) }), !take(id) { return }
            }
        }
    }

    /// One pass over the matches keeps the first 100 online hits and the first 100 others and
    /// stops at the 100th online one; once it has 100 others, the rest of the matches is read
    /// by a query that skips the offline owners' files in SQL. (Two passes, online then
    /// offline, walked the matches twice when few owners are online.) CROSS JOIN keeps the
    /// index as the outer loop: otherwise SQLite may start from the 100,000 connected users
    /// and probe the index for each of their files. The online test reads the small index
    /// of the connected users, not the users table.
    static func search(match: String, in db: Database) throws -> [SearchHit] {
        let limit = DirectoryRules.maxSearchHits
        var online: [SearchHit] = []
        var offline: [SearchHit] = []
        var lastRowid: Int64 = 0
        let matches = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    SELECT f.owner, f.name, f.description, f.id,
                        EXISTS (SELECT 1 FROM user INDEXED BY user_connected WHERE name = f.owner AND ip IS NOT NULL)
                    FROM file_search CROSS JOIN file f ON f.id = file_search.rowid
                    WHERE file_search MATCH ?1 ORDER BY file_search.rowid
                    """), arguments: [match])
        while online.count < limit, offline.count < limit, let row = try matches.next() {
            if row[4] as Bool { online.append(hit(row)) } else { offline.append(hit(row)) }
            lastRowid = row[3]
        }
        if online.count < limit, offline.count == limit {
            let onlineMatches = try Row.fetchCursor(
                db.cachedStatement(
                    sql: """
                        SELECT f.owner, f.name, f.description FROM file_search
                        CROSS JOIN file f ON f.id = file_search.rowid
                        WHERE file_search MATCH ?1 AND file_search.rowid > ?2
                            AND EXISTS (SELECT 1 FROM user INDEXED BY user_connected
                                        WHERE name = f.owner AND ip IS NOT NULL)
                        ORDER BY file_search.rowid LIMIT ?3
                        """), arguments: [match, lastRowid, limit - online.count])
            while let row = try onlineMatches.next() { online.append(hit(row)) }
        }
        return online + offline.prefix(limit - online.count)
    }

    /// The same with the bitmaps: `candidates` gives the ids of the files that match, in
    /// increasing order, to its argument until that returns false; they are sorted into online
    /// and offline in memory, and only the files answered with are looked up.
    static func search(
        online: FileBitmap, in db: Database, candidates: (_ take: (Int64) -> Bool) throws -> Void
    ) throws -> [SearchHit] {
        let limit = DirectoryRules.maxSearchHits
        var onlineIds: [Int64] = []
        var offlineIds: [Int64] = []
        try candidates { id in
            if online.contains(id) {
                onlineIds.append(id)
            } else if offlineIds.count < limit {
                offlineIds.append(id)
            }
            return onlineIds.count < limit
        }
        return try files(onlineIds + offlineIds.prefix(limit - onlineIds.count), in: db)
    }

    /// The files with these ids, in this order.
    static func files(_ ids: [Int64], in db: Database) throws -> [SearchHit] {
        guard !ids.isEmpty else { return [] }
        return try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT f.owner, f.name, f.description
                    FROM json_each(?1) AS answered CROSS JOIN file f ON f.id = answered.value
                    """), arguments: ["[" + ids.map(String.init).joined(separator: ",") + "]"]
        ).map(hit)
    }

    static func hit(_ row: Row) -> SearchHit {
        SearchHit(owner: row[0], name: row[1], description: row[2])
    }

    /// `word` as an FTS5 string: never read as FTS5 syntax.
    static func quotedForMatch(_ word: String) -> String {
        "\"" + word.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// The most words a long prefix is expanded into (see `matchExpression`).
    static let maxPrefixExpansion = 256
    /// The longest prefix the search index keeps a list for (migration v4).
    static let longestPrefixList = 6

    /// The FTS5 expression for "a word starting with `prefix`". Every word is quoted: the text
    /// is never read as FTS5 syntax.
    ///
    /// Prefixes of up to 6 characters are read from the index's prefix lists
    /// (`prefix = '2 3 4 5 6'`). A longer one would make FTS5 gather and merge, before the
    /// first hit, the lists of every word it covers. Such a prefix usually stands for a few
    /// words, read from the index's word list; their lists are then merged lazily
    /// (`"lecture" OR "lectures" ...`) and the query stops at its 100 hits. A prefix of more
    /// words than `maxPrefixExpansion`, or of none the word list knows, stays a prefix query.
    static func matchExpression(forPrefix prefix: String, in db: Database) throws -> String {
        let quoted = quotedForMatch
        guard prefix.unicodeScalars.count > longestPrefixList else { return quoted(prefix) + "*" }
        // Words sort by their UTF-8 bytes; U+10FFFF sorts after every continuation of `prefix`.
        let words = try String.fetchAll(
            db.cachedStatement(sql: "SELECT term FROM file_search_words WHERE term >= ?1 AND term < ?2 LIMIT ?3"),
            arguments: [prefix, prefix + "\u{10FFFF}", maxPrefixExpansion + 1])
        guard !words.isEmpty, words.count <= maxPrefixExpansion, words.allSatisfy({ $0.hasPrefix(prefix) }) else {
            return quoted(prefix) + "*"
        }
        return "(" + words.map(quoted).joined(separator: " OR ") + ")"
    }
}
