import Foundation
import Logging
import P2PDirectory
import P2PProtocol
import PostgresNIO
import Synchronization

// SEARCH on the word table: the driving prefix, the merge in answer order, the planner's estimates.
extension PostgresDirectoryStore {
    /// What a SEARCH came to: the requester's code (not registered, not connected), or hits.
    enum SearchOutcome {
        case refused(ResultCode)
        case hits([SearchHit])
    }

    /// SEARCH: each word of the query is a range of the word index (its prefix up to the
    /// prefix followed by U+10FFFF, which sorts after every continuation in byte order); the
    /// online owners' hits come first, each group in publishing order. `requester` nil: the
    /// server's own search (its web page), nobody's presence checked.
    ///
    /// One prefix drives: the one the planner expects the fewest rows for (its statistics of
    /// the word index, kept a minute; a prefix such as `txt` or `file3`, one word in a tenth of
    /// all files, must not drive however few words it has). Its words' files are read in
    /// answer order (the word index's order: offline, then file id), merged, and each
    /// candidate is tested for the other prefixes in the file's words its row carries, a batch
    /// at a time, until enough hits are found: the work is about the hits' share of the
    /// driver's files, not the size of the other prefixes.
    ///
    /// The requester's presence, the driver's words, whether every other prefix matches a
    /// word, and the first batch are one statement: one round trip for most searches. Under
    /// the mixed load each round trip waits for a core; three of them (presence, words, batch)
    /// were most of a search's time there.
    func search(_ text: String, requester: String?, _ connection: PostgresConnection) async throws
        -> SearchOutcome
    {
        let prefixes = Set(DirectoryRules.searchWords(text)).sorted()
        // A prefix alone drives without an estimate; a tie goes to the longer prefix.
        var estimates = [Double](repeating: 0, count: prefixes.count)
        if prefixes.count > 1 {
            for (index, prefix) in prefixes.enumerated() {
                estimates[index] = try await estimatedRows(startingWith: prefix, connection)
            }
        }
        let driver = prefixes.indices.min {
            (estimates[$0], -prefixes[$0].utf8.count) < (estimates[$1], -prefixes[$1].utf8.count)
        }!
        let others = prefixes.indices.filter { $0 != driver }.map { prefixes[$0] }
        // The share of the driver's files expected to be hits: each other prefix's rows over
        // all files (its words are about one row per file).
        var share = 1.0
        if !others.isEmpty {
            let files = try await estimatedFiles(connection)
            for index in prefixes.indices where index != driver { share *= min(1, estimates[index] / max(files, 1)) }
        }
        let wanted = DirectoryRules.maxSearchHits
        // The first batch's rows, over all the driver's words: four times the candidates
        // expected to hold the hits wanted (each batch costs a round trip, so a batch too large
        // costs less than one batch more).
        let firstBatch = Int64(min(1e12, 4 * Double(wanted) / max(share, 1e-4)))
        // 0: the first batch divides its rows among the driver's words. A driver the planner
        // expects few rows of is read whole at once instead, each word up to all of them and a
        // quarter more for the estimate's error (`file3 w999`, whose hits come later than
        // their share says, read its 16,500 rows in two round trips before).
        let driverRows = 1.25 * estimates[driver]
        var perWord: Int64 =
            driverRows > 4 * Double(wanted) && driverRows <= Self.rowsWorthARoundTrip
            ? Int64(driverRows) : 0
        let batch = MergedSearchStatement(requester: requester, driver: prefixes[driver], others: others)

        var hits: [SearchHit] = []
        var found = Set<Int64>()
        var after = (offline: false, id: Int64(0))  // ids start at 1
        while hits.count < wanted {
            let rows = try await connection.query(
                batch.query(after: after, perWord: perWord, firstBatch: firstBatch, wanted: wanted - hits.count),
                logger: logger)
            var bound: Int64?
            for try await (registered, connected, words, rowPerWord, rowBound, id, owner, name, description)
                in rows.decode((Bool, Bool, Int64, Int64, Int64?, Int64?, String?, String?, String?).self)
            {
                if let code = DirectoryRules.requesterCode(registered: registered, connected: connected) {
                    return .refused(code)
                }
                if words > Self.maxMergedWords {
                    let driverWords = try await self.words(startingWith: prefixes[driver], connection)
                    return .hits(try await perWordSearch(words: driverWords, others: others, connection))
                }
                perWord = rowPerWord
                bound = rowBound
                // (No owner: the file was deleted meanwhile.)
                if let id, let owner, let name, let description, found.insert(id).inserted {
                    hits.append(SearchHit(owner: owner, name: name, description: description))
                }
            }
            // No word had more: everything was read.
            guard let bound else { break }
            after = bound >= Self.offlineKeyOffset ? (true, bound - Self.offlineKeyOffset) : (false, bound)
            perWord = min(perWord * 4, 65536)
        }
        return .hits(hits)
    }

    /// How many rows of the word index a search reads in about the time a round trip to the
    /// database takes under load (0.4 µs a row against 5-10 ms a statement waits for a core
    /// under the mixed load on two cores): a driver expected to have fewer is read whole.
    static let rowsWorthARoundTrip = 20_000.0

    /// The most words a driving prefix is merged over (one index range each per batch); a
    /// prefix of more words (`w`, say) drives through ``perWordSearch(words:others:_:)``.
    static let maxMergedWords = 256

    /// One batch of a search: the driving prefix's words' files merged in answer order, read
    /// after a position, each candidate tested for every other prefix, the first hits joined
    /// with their files; with the requester's presence and the driver's word count, so that
    /// the first batch is the search's only round trip.
    ///
    /// A batch reads up to `perWord` rows of each word after the position reached; the merge of
    /// what came back is complete up to the smallest last row of a word that gave all
    /// `perWord` (a word that gave fewer has nothing more), so only that part is used and the
    /// next batch starts after it (`bound`; NULL: nothing more to read). The first batch's
    /// `perWord` is its row count over the driver's words (at least 8, at most 16,384). Nothing
    /// is read when the requester is not connected, the driver has no word or more than
    /// ``maxMergedWords``, or another prefix matches no word.
    ///
    /// Each word's rows are folded as they are read into one row (the keys of its hits, its
    /// last key, how many), rather than kept and read twice more for the bound and the hits:
    /// half the time (`file3 w999` at 10 million files, all of its 16,500 rows: 12.6 -> 6-8 ms).
    struct MergedSearchStatement {
        let sql: String
        let bindings: PostgresBindings

        init(requester: String?, driver: String, others: [String]) {
            var bindings = PostgresBindings()
            func bind(_ value: String) -> String {
                bindings.append(value)
                return "$\(bindings.count)"
            }
            let presence =
                if let requester {
                    """
                    SELECT r.name IS NOT NULL AS registered, r.ip IS NOT NULL AS connected
                    FROM (VALUES (1)) AS one (x) LEFT JOIN directory_user r ON r.name = \(bind(requester))
                    """
                } else {
                    "SELECT true AS registered, true AS connected"
                }
            let driverWords = PostgresDirectoryStore.wordsQuery(startingWith: driver, into: &bindings)
            let othersExist = others.map { prefix in
                " AND EXISTS (SELECT FROM directory_file_word WHERE word >= \(bind(prefix))"
                    + " AND word < \(bind(PostgresDirectoryStore.rangeEnd(of: prefix))))"
            }.joined()
            let isHit = "true" + PostgresDirectoryStore.otherPrefixes(others, in: "t.words", into: &bindings)
            let next = bindings.count + 1
            let (afterOffline, afterID, perWord, firstBatch, wanted) =
                ("$\(next)", "$\(next + 1)", "$\(next + 2)", "$\(next + 3)", "$\(next + 4)")
            // A row's place in answer order as one number: offline rows after every online one.
            let offset = PostgresDirectoryStore.offlineKeyOffset
            let key = "(CASE WHEN t.offline THEN t.file_id + \(offset) ELSE t.file_id END)"
            self.bindings = bindings
            self.sql = """
                \(driverWords),
                d AS MATERIALIZED (
                    SELECT word FROM w WHERE word IS NOT NULL LIMIT \(PostgresDirectoryStore.maxMergedWords + 1)),
                q AS MATERIALIZED (
                    SELECT p.registered, p.connected, n.words,
                        (CASE WHEN \(perWord)::int8 > 0 THEN \(perWord)::int8
                            ELSE greatest(8, least(16384, \(firstBatch)::int8 / greatest(n.words, 1))) END) AS per_word,
                        p.connected
                            AND n.words BETWEEN 1 AND \(PostgresDirectoryStore.maxMergedWords)\(othersExist) AS go
                    FROM (\(presence)) AS p, (SELECT count(*) AS words FROM d) AS n),
                c AS MATERIALIZED (
                    SELECT g.hits, g.last, g.taken
                    FROM d CROSS JOIN LATERAL (
                        SELECT array_agg(t.k) FILTER (WHERE \(isHit)) AS hits, max(t.k) AS last, count(*) AS taken
                        FROM (
                            SELECT \(key) AS k, t.words FROM directory_file_word t
                            WHERE t.word = d.word AND (t.offline, t.file_id) > (\(afterOffline)::bool, \(afterID)::int8)
                            ORDER BY t.offline, t.file_id LIMIT (SELECT per_word FROM q)) AS t) AS g
                    WHERE (SELECT go FROM q)),
                b AS (SELECT min(last) FILTER (WHERE taken = (SELECT per_word FROM q)) AS bound FROM c)
                SELECT q.registered, q.connected, q.words, q.per_word, b.bound, h.k, f.owner, f.name, f.description
                FROM q CROSS JOIN b LEFT JOIN LATERAL (
                    SELECT DISTINCT hit.k FROM c CROSS JOIN unnest(c.hits) AS hit (k)
                    WHERE b.bound IS NULL OR hit.k <= b.bound
                    ORDER BY hit.k LIMIT \(wanted)::int8) AS h ON true
                LEFT JOIN directory_file f
                    ON f.id = h.k - (CASE WHEN h.k >= \(offset) THEN \(offset) ELSE 0 END)
                ORDER BY h.k
                """
        }

        /// The batch after `after` (the last key of the batch before; `(false, 0)` first),
        /// `perWord` rows a word (0: the first batch, `firstBatch` rows over the words), for
        /// up to `wanted` hits.
        func query(after: (offline: Bool, id: Int64), perWord: Int64, firstBatch: Int64, wanted: Int) -> PostgresQuery {
            var batch = bindings
            batch.append(after.offline)
            batch.append(after.id)
            batch.append(perWord)
            batch.append(firstBatch)
            batch.append(Int64(wanted))
            return PostgresQuery(unsafeSQL: sql, binds: batch)
        }
    }

    /// The distinct words of the word index that start with `prefix`, in order.
    func words(startingWith prefix: String, _ connection: PostgresConnection) async throws -> [String] {
        var bindings = PostgresBindings()
        let sql = Self.wordsQuery(startingWith: prefix, into: &bindings) + "\nSELECT word FROM w WHERE word IS NOT NULL"
        var words: [String] = []
        for try await word in try await connection.query(PostgresQuery(unsafeSQL: sql, binds: bindings), logger: logger)
            .decode(String.self)
        {
            words.append(word)
        }
        return words
    }

    /// `WITH RECURSIVE w (word)`: the distinct words of the word index that start with
    /// `prefix`, in order, by a loose index scan (one index descent per word, however many
    /// files have it), then NULL. Binds the prefix and its range's end into `bindings`.
    static func wordsQuery(startingWith prefix: String, into bindings: inout PostgresBindings) -> String {
        bindings.append(prefix)
        let start = "$\(bindings.count)"
        bindings.append(rangeEnd(of: prefix))
        let stop = "$\(bindings.count)"
        return """
            WITH RECURSIVE w (word) AS (
                SELECT min(word) FROM directory_file_word WHERE word >= \(start) AND word < \(stop)
                UNION ALL
                SELECT (SELECT min(t.word) FROM directory_file_word t WHERE t.word > w.word AND t.word < \(stop))
                FROM w WHERE w.word IS NOT NULL)
            """
    }

    /// How many rows of the word index the planner expects for `prefix` (from its statistics:
    /// planning only, nothing is read).
    ///
    /// Kept a minute per prefix, then asked again in the background (`remembered(_:on:ask:)`):
    /// the statistics change only when autovacuum analyzes the table, an estimate only chooses
    /// how the search runs (never what it finds), and a popular search then costs a round trip
    /// less per other prefix.
    func estimatedRows(startingWith prefix: String, _ connection: PostgresConnection) async throws -> Double {
        let logger = self.logger
        return try await remembered(.rows(prefix: prefix), on: connection) { connection in
            let end = Self.rangeEnd(of: prefix)
            let rows = try await connection.query(
                "EXPLAIN (FORMAT JSON) SELECT 1 FROM directory_file_word WHERE word >= \(prefix) AND word < \(end)",
                logger: logger)
            var estimate = Double.infinity
            for try await plan in rows.decode(String.self) {
                if let range = plan.range(of: "\"Plan Rows\": ") {
                    estimate = Double(plan[range.upperBound...].prefix { $0.isNumber || $0 == "." }) ?? .infinity
                }
            }
            return estimate
        }
    }

    /// How many files the planner's statistics count (kept by autovacuum and ANALYZE), asked
    /// again at most once a minute, in the background: an estimate, and a round trip less per
    /// search.
    func estimatedFiles(_ connection: PostgresConnection) async throws -> Double {
        let logger = self.logger
        return try await remembered(.files, on: connection) { connection in
            let rows = try await connection.query(
                "SELECT reltuples::float8 FROM pg_class WHERE oid = 'directory_file'::regclass", logger: logger)
            var files = 0.0
            for try await count in rows.decode(Double.self) { files = count }
            return files
        }
    }

    /// A planner's estimate SEARCH uses: the files, or the word index's rows of a prefix.
    enum Estimate: Hashable {
        case files
        case rows(prefix: String)
    }

    /// `estimate` as last asked. Only an estimate never asked is `ask`ed on `connection`, while
    /// the search waits; one asked more than ``estimateLifetime`` ago is used as it is, and
    /// asked again on a connection of its own in the background for the searches after. Under
    /// the mixed load each round trip costs a search several milliseconds, and a search of two
    /// words would otherwise pay three more once a minute: enough to be the slowest of a
    /// hundred. Bounded: past 10,000 estimates the cache starts again.
    func remembered(
        _ estimate: Estimate, on connection: PostgresConnection,
        ask: @escaping @Sendable (PostgresConnection) async throws -> Double
    ) async throws -> Double {
        let now = ContinuousClock.now
        let lifetime = settings.estimateLifetime
        let known = estimates.withLock { known -> (value: Double, stale: Bool)? in
            guard let entry = known[estimate] else { return nil }
            guard now - entry.at >= lifetime else { return (entry.value, false) }
            // This search asks again; the ones until the answer is back use the value as well.
            known[estimate]!.at = now
            return (entry.value, true)
        }
        if let known {
            if known.stale {
                // Within the store's deadline, as every statement: a database that stopped
                // answering leaves the old value in use, asked again a lifetime later.
                Task {
                    guard
                        let value = try? await Self.withDeadline(
                            self.settings.timeout,
                            {
                                try await self.client.withConnection { try await ask($0) }
                            })
                    else { return }
                    self.estimates.withLock { $0[estimate] = (value, .now) }
                }
            }
            return known.value
        }
        let value = try await ask(connection)
        estimates.withLock { known in
            if known.count >= 10_000 { known.removeAll() }
            known[estimate] = (value, now)
        }
        return value
    }

    /// The planner's estimate of how many rows of the word index a prefix has, as remembered
    /// now (nil when never asked); for tests.
    func rememberedEstimate(ofRowsStartingWith prefix: String) -> Double? {
        estimates.withLock { $0[.rows(prefix: prefix)]?.value }
    }

    /// Where `prefix`'s range of the word index ends: the prefix followed by U+10FFFF, which
    /// sorts after every continuation in byte order.
    static func rangeEnd(of prefix: String) -> String {
        prefix + "\u{10FFFF}"
    }

    /// The conditions (each after ` AND `) that a row's file has a word starting with each of
    /// `prefixes`, tested in its `words` column (an SQL expression; see ``wordsColumn(_:)``):
    /// a string search in what the row already holds, nothing more read.
    static func otherPrefixes(_ prefixes: [String], in words: String, into bindings: inout PostgresBindings) -> String {
        prefixes.map { prefix in
            bindings.append(" " + prefix)
            return " AND strpos(\(words), $\(bindings.count)) > 0"
        }.joined()
    }

    /// Added to an offline row's file id in `mergedSearch`'s order key (ids stay far below).
    static let offlineKeyOffset: Int64 = 1 << 62

    /// The first hits for a driving prefix of very many words: each word's first hits (tested
    /// for the others in its rows) in one statement, merged.
    func perWordSearch(words: [String], others: [String], _ connection: PostgresConnection) async throws
        -> [SearchHit]
    {
        var bindings = PostgresBindings()
        bindings.append(words)
        let conditions = Self.otherPrefixes(others, in: "t.words", into: &bindings)
        bindings.append(DirectoryRules.maxSearchHits)
        let limit = "$\(bindings.count)"
        let sql = """
            SELECT f.owner, f.name, f.description FROM (
                SELECT DISTINCT c.file_id, c.offline FROM unnest($1::text[]) AS d (word)
                CROSS JOIN LATERAL (
                    SELECT t.file_id, t.offline FROM directory_file_word t
                    WHERE t.word = d.word\(conditions)
                    ORDER BY t.offline, t.file_id LIMIT \(limit)) AS c
                ORDER BY c.offline, c.file_id LIMIT \(limit)) AS m
            JOIN directory_file f ON f.id = m.file_id
            ORDER BY m.offline, m.file_id
            """
        let rows = try await connection.query(PostgresQuery(unsafeSQL: sql, binds: bindings), logger: logger)
        var hits: [SearchHit] = []
        for try await (owner, name, description) in rows.decode((String, String, String).self) {
            hits.append(SearchHit(owner: owner, name: name, description: description))
        }
        return hits
    }
}
