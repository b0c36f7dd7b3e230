import Foundation
import P2PProtocol

/// Saved searches that keep running (every ``ClientSession/wishlistInterval`` and at CONNECT):
/// each new match is kept, and with `fetch` downloaded, once. What each entry has seen is kept
/// in the state folder (`wishlist.json`), so a file is never fetched twice, across runs too.
public struct Wishlist: Sendable, Codable, Equatable {
    public struct Entry: Sendable, Codable, Equatable, Identifiable {
        public var id: Int
        public var query: String
        /// Download each new match.
        public var fetch: Bool
        /// Every match seen so far, `owner` NUL `name` (bounded: ``maxSeen``).
        public var seen: [String]
        /// The newest matches, newest last (``maxMatches``).
        public var matches: [Match]
        public var lastRun: Date?
        /// How many times it was searched.
        public var runs: Int
    }

    public struct Match: Sendable, Codable, Equatable {
        public var owner: String
        public var name: String
        public var description: String
        public var found: Date
    }

    /// Entries at most: each runs a SEARCH per round.
    public static let maxEntries = 50
    /// Matches remembered per entry (SEARCH answers at most 100 a time).
    public static let maxSeen = 10_000
    public static let maxMatches = 200

    public private(set) var entries: [Entry] = []
    private var nextID = 1

    public init() {}

    enum CodingKeys: String, CodingKey {
        case entries
        case nextID
    }

    /// Adds a saved search; nil when there are ``maxEntries`` already.
    mutating func add(_ query: String, fetch: Bool) -> Entry? {
        guard entries.count < Self.maxEntries else { return nil }
        let entry = Entry(id: nextID, query: query, fetch: fetch, seen: [], matches: [], lastRun: nil, runs: 0)
        nextID += 1
        entries.append(entry)
        return entry
    }

    mutating func remove(_ id: Int) -> Bool {
        let before = entries.count
        entries.removeAll { $0.id == id }
        return entries.count != before
    }

    /// The hits of entry `id`'s search this round: those not seen before, now seen.
    mutating func record(_ hits: [SearchHit], for id: Int, at now: Date = Date()) -> [SearchHit] {
        guard let index = entries.firstIndex(where: { $0.id == id }) else { return [] }
        var seen = Set(entries[index].seen)
        var fresh: [SearchHit] = []
        for hit in hits where seen.insert(hit.owner + "\u{0}" + hit.name).inserted {
            fresh.append(hit)
            entries[index].seen.append(hit.owner + "\u{0}" + hit.name)
            entries[index].matches.append(
                Match(owner: hit.owner, name: hit.name, description: hit.description, found: now))
        }
        if entries[index].seen.count > Self.maxSeen {
            entries[index].seen.removeFirst(entries[index].seen.count - Self.maxSeen)
        }
        if entries[index].matches.count > Self.maxMatches {
            entries[index].matches.removeFirst(entries[index].matches.count - Self.maxMatches)
        }
        entries[index].lastRun = now
        entries[index].runs += 1
        return fresh
    }

    /// The wishlist kept at `path`, or an empty one when there is none (or it cannot be read).
    static func load(from path: String) -> Wishlist {
        guard let data = FileManager.default.contents(atPath: path),
            let list = try? JSONDecoder().decode(Wishlist.self, from: data)
        else { return Wishlist() }
        return list
    }

    /// Writes it to `path` (a new file renamed over the old one, so that a crash leaves one or the other).
    func save(to path: String) throws {
        let folder = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try JSONEncoder().encode(self).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}
