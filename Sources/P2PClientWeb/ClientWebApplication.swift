import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import P2PClient
import P2PNetworkSupport
import P2PProtocol

/// Where the client's web face listens (`p2p-client --web [ADDR:]PORT`): 127.0.0.1 unless an
/// address is given.
public struct ClientWebAddress: Sendable, Equatable {
    public var host: String
    public var port: Int

    public init(host: String = "127.0.0.1", port: Int) {
        self.host = host
        self.port = port
    }

    /// `8080`, `127.0.0.1:8080`, `0.0.0.0:8080`, `[::1]:8080`; nil for anything else.
    public init?(parsing text: String) {
        if let port = Int(text) {
            guard (0...65535).contains(port) else { return nil }
            self.init(port: port)
            return
        }
        guard let separator = text.lastIndex(of: ":"), let port = Int(text[text.index(after: separator)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = Substring(text[..<separator])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = host.dropFirst().dropLast()
        } else if host.contains(":") {
            return nil
        }
        guard !host.isEmpty else { return nil }
        self.init(host: String(host), port: port)
    }
}

/// The client's web face: the page (`/`) and the JSON API under `/api/v1` (described in
/// `docs/client-api.json`), both driving the same ``ClientSession`` as the shell. Every request
/// must carry the token (`Authorization: Bearer`, `?token=` or the cookie the page sets), else
/// 401.
public func buildClientWebApplication(
    _ address: ClientWebAddress, session: ClientSession, log: OutputLog, token: WebToken, logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let router = Router()
    router.add(middleware: TokenCheck(token: token))
    ClientWebController(session: session, log: log, token: token).register(on: router)
    return Application(
        router: router,
        configuration: .init(
            address: .hostname(DualStack.unbracketed(address.host), port: address.port), serverName: "p2p-client"),
        onServerRunning: onServerRunning,
        logger: logger)
}

/// The token on every request: a header, the query, or the cookie set when the page was
/// opened with the token in its address. (A cookie set `SameSite=Strict` is not sent with
/// requests other sites start, and POSTs must be JSON, which a plain form cannot send.)
struct TokenCheck<Context: RequestContext>: RouterMiddleware {
    let token: WebToken

    static var cookieName: String { "p2p_client_token" }

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard carriesToken(request) else {
            return Response(
                status: .unauthorized,
                headers: [.contentType: "text/plain; charset=utf-8", .wwwAuthenticate: "Bearer"],
                body: .init(
                    byteBuffer: ByteBuffer(
                        string:
                            "401: this needs the token p2p-client printed at start (its web address with ?token=...)\n"
                    )))
        }
        if request.method == .post, request.headers[.contentType]?.hasPrefix("application/json") != true {
            return Response(
                status: .unsupportedMediaType,
                body: .init(byteBuffer: ByteBuffer(string: "415: requests with a body must be application/json\n")))
        }
        var response = try await next(request, context)
        if request.uri.queryParameters["token"].map({ token.matches($0) }) == true {
            response.headers[.setCookie] =
                "\(Self.cookieName)=\(token.value); Path=/; HttpOnly; SameSite=Strict"
        }
        return response
    }

    private func carriesToken(_ request: Request) -> Bool {
        if let header = request.headers[.authorization], header.hasPrefix("Bearer "),
            token.matches(header.dropFirst("Bearer ".count))
        {
            return true
        }
        if let query = request.uri.queryParameters["token"], token.matches(query) { return true }
        for cookies in request.headers[values: .cookie] {
            for cookie in cookies.split(separator: ";") {
                let pair = cookie.trimmingCharacters(in: .whitespaces)
                if pair.hasPrefix(Self.cookieName + "="), token.matches(pair.dropFirst(Self.cookieName.count + 1)[...])
                {
                    return true
                }
            }
        }
        return false
    }
}

struct ClientWebController: Sendable {
    let session: ClientSession
    let log: OutputLog
    let token: WebToken

    func register(on router: Router<BasicRequestContext>) {
        router.get("/") { _, _ in
            Response(
                status: .ok,
                headers: [
                    .contentType: "text/html; charset=utf-8",
                    // Our own script and style only; nothing from elsewhere.
                    .contentSecurityPolicy: ClientWebPage.contentSecurityPolicy,
                    .cacheControl: "no-store",
                ],
                body: .init(byteBuffer: ByteBuffer(string: ClientWebPage.html)))
        }
        router.get("/app.js") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/javascript; charset=utf-8", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(string: ClientWebPage.script)))
        }
        router.get("/app.css") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/css; charset=utf-8", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(string: ClientWebPage.style)))
        }
        let api = router.group("api/v1")
        api.get("session") { _, _ in SessionJSON(await session.snapshot) }
        api.get("users") { _, _ in
            do {
                return try await session.onlineUsers().map(UserJSON.init)
            } catch {
                throw HTTPError(.badGateway, message: "\(error)")
            }
        }
        api.get("users/:name/files") { _, context in
            let name = try context.parameters.require("name")
            do {
                return try await session.files(of: name).map(FileJSON.init)
            } catch {
                throw HTTPError(.badGateway, message: "\(error)")
            }
        }
        api.get("search") { request, _ in
            guard let query = request.uri.queryParameters["q"].map(String.init), !query.isEmpty else {
                throw HTTPError(.badRequest, message: "search needs words: ?q=...")
            }
            do {
                let hits = try await session.search(query)
                // Whether each owner is online now, from one LIST_USERS.
                let online = Set((try? await session.onlineUsers())?.map(\.name) ?? [])
                return hits.map { HitJSON($0, online: online.contains($0.owner)) }
            } catch {
                throw HTTPError(.badGateway, message: "\(error)")
            }
        }
        api.get("transfers") { _, _ in session.transfers.all.map { TransferJSON($0) } }
        api.post("downloads") { request, context in
            let asked = try await request.decode(as: DownloadRequest.self, context: context)
            guard !asked.owner.isEmpty, !asked.file.isEmpty else {
                throw HTTPError(.badRequest, message: "a download needs an owner and a file")
            }
            let local = asked.localName ?? LocalNames.lastPart(of: asked.file)
            guard let local, LocalNames.isSafe(local) else {
                throw HTTPError(
                    .badRequest, message: "no safe local name for \(asked.file): give localName (no .. or leading /)")
            }
            let id = await session.startDownload(from: asked.owner, remoteName: asked.file, localName: local)
            return EditedResponse(status: .accepted, response: DownloadStarted(id: id, localName: local))
        }
        api.post("folder-downloads") { request, context in
            let asked = try await request.decode(as: FolderDownloadRequest.self, context: context)
            do {
                let ids = try await session.startFolderDownload(from: asked.owner, folder: asked.folder)
                return EditedResponse(status: .accepted, response: FolderDownloadStarted(ids: ids))
            } catch {
                throw HTTPError(.badRequest, message: "\(error)")
            }
        }
        api.get("wishlist") { _, _ in await session.wishes.map(WishJSON.init) }
        api.post("wishlist") { request, context in
            let asked = try await request.decode(as: WishRequest.self, context: context)
            guard !asked.query.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw HTTPError(.badRequest, message: "a wish needs words")
            }
            guard let entry = await session.addWish(asked.query, fetch: asked.fetch ?? true) else {
                throw HTTPError(.badRequest, message: "the wishlist is full")
            }
            return EditedResponse(status: .created, response: WishJSON(entry))
        }
        api.delete("wishlist/:id") { _, context in
            guard let id = Int(try context.parameters.require("id")), await session.removeWish(id) else {
                throw HTTPError(.notFound, message: "no such wish")
            }
            return Response(status: .noContent)
        }
        api.get("shares") { _, _ in await session.shares().map(ShareJSON.init) }
        api.get("log") { request, _ in
            let after = request.uri.queryParameters["after"].flatMap { Int($0) } ?? 0
            return log.entries(after: after).map(LogEntryJSON.init)
        }
        api.post("commands") { request, context in
            let asked = try await request.decode(as: CommandRequest.self, context: context)
            let words = asked.line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let name = words.first?.uppercased() else {
                throw HTTPError(.badRequest, message: "an empty command")
            }
            // The shell's end is the shell's: the web face does not stop the client.
            guard name != "QUIT" else {
                throw HTTPError(.badRequest, message: "QUIT is the shell's (stop a service with SIGTERM)")
            }
            let before = log.last
            _ = await session.execute(line: asked.line)
            return log.entries(after: before).map(LogEntryJSON.init)
        }
        api.get("events") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/event-stream", .cacheControl: "no-store"],
                body: ResponseBody { writer in try await events(into: &writer) })
        }
    }

    /// Server-sent events: `transfers` (the whole list) when it changed, at most once a
    /// second, and `log` with the console's new entries; a comment every 15 s keeps the
    /// connection open through proxies. Ends when the page goes.
    private func events(into writer: inout any ResponseBodyWriter) async throws {
        let encoder = JSONEncoder()
        var lastTransfers = Data()
        var seen = log.last
        var quiet = 0
        while !Task.isCancelled {
            var text = ""
            let transfers = try encoder.encode(session.transfers.all.map { TransferJSON($0) })
            if transfers != lastTransfers {
                text += "event: transfers\ndata: \(String(decoding: transfers, as: UTF8.self))\n\n"
                lastTransfers = transfers
            }
            let entries = log.entries(after: seen)
            if let newest = entries.last {
                seen = newest.number
                let json = try encoder.encode(entries.map(LogEntryJSON.init))
                text += "event: log\ndata: \(String(decoding: json, as: UTF8.self))\n\n"
            }
            quiet = text.isEmpty ? quiet + 1 : 0
            if quiet >= 15 {
                text = ": still here\n\n"
                quiet = 0
            }
            if !text.isEmpty { try await writer.write(ByteBuffer(string: text)) }
            try await Task.sleep(for: .seconds(1))
        }
        try await writer.finish(nil)
    }
}

// MARK: The API's JSON (docs/client-api.json)

struct SessionJSON: ResponseEncodable {
    var user: String?
    var actingUser: String?
    var server: String
    var peerPort: Int?
    var controlConnection: Bool
    var offers: [String]
    var fingerprint: String?

    init(_ snapshot: ClientSession.Snapshot) {
        user = snapshot.user
        actingUser = snapshot.actingUser
        server = snapshot.server
        peerPort = snapshot.peerPort
        controlConnection = snapshot.controlConnection
        offers = snapshot.offers
        fingerprint = snapshot.fingerprint
    }
}

struct UserJSON: ResponseEncodable {
    var name: String
    var ip: String
    var port: String

    init(_ user: ConnectedUser) {
        name = user.name
        ip = user.ip
        port = user.port
    }
}

struct FileJSON: ResponseEncodable {
    var name: String
    var description: String

    init(_ file: PublishedFile) {
        name = file.name
        description = file.description
    }
}

struct HitJSON: ResponseEncodable {
    var owner: String
    var name: String
    var description: String
    var online: Bool

    init(_ hit: SearchHit, online: Bool) {
        owner = hit.owner
        name = hit.name
        description = hit.description
        self.online = online
    }
}

struct TransferJSON: ResponseEncodable {
    var id: Int
    var direction: String
    var file: String
    var peers: [String]
    var localPath: String?
    var bytes: Int64
    var total: Int64?
    /// `queued`, `running`, `done`, `notFound` or `failed`.
    var state: String
    var verified: Bool
    var reason: String?
    var bytesPerSecond: Double
    var seconds: Double

    init(_ transfer: Transfer, now: ContinuousClock.Instant = .now) {
        id = transfer.id
        direction = transfer.direction.rawValue
        file = transfer.file
        peers = transfer.peers
        localPath = transfer.localPath
        bytes = transfer.bytes
        total = transfer.total
        verified = false
        switch transfer.state {
        case .queued: state = "queued"
        case .running: state = "running"
        case .done(let checked):
            state = "done"
            verified = checked
        case .notFound: state = "notFound"
        case .failed(let why):
            state = "failed"
            reason = why
        }
        bytesPerSecond = transfer.rate(now: now)
        let elapsed = (transfer.ended ?? now) - transfer.started
        seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
}

struct DownloadRequest: Decodable {
    var owner: String
    var file: String
    var localName: String?
}

struct DownloadStarted: ResponseEncodable {
    var id: Int
    var localName: String
}

struct WishRequest: Decodable {
    var query: String
    var fetch: Bool?
}

struct WishJSON: ResponseEncodable {
    struct Match: Encodable {
        var owner: String
        var name: String
        var description: String
        var found: String
    }

    var id: Int
    var query: String
    var fetch: Bool
    var matches: [Match]
    var lastRun: String?
    var runs: Int

    init(_ entry: Wishlist.Entry) {
        runs = entry.runs
        let format = ISO8601DateFormatter()
        id = entry.id
        query = entry.query
        fetch = entry.fetch
        matches = entry.matches.map {
            Match(owner: $0.owner, name: $0.name, description: $0.description, found: format.string(from: $0.found))
        }
        lastRun = entry.lastRun.map { format.string(from: $0) }
    }
}

struct FolderDownloadRequest: Decodable {
    var owner: String
    var folder: String
}

struct FolderDownloadStarted: ResponseEncodable {
    var ids: [Int]
}

struct ShareJSON: ResponseEncodable {
    struct Skipped: Encodable {
        var reason: String
        var count: Int
    }

    var path: String
    var published: Int
    var skipped: [Skipped]
    var withdrawn: Int
    var unfollowed: Int
    var waitsForConnect: Bool

    init(_ share: FolderSharing.ShareSummary) {
        path = share.path
        published = share.published
        skipped = share.skipped.map { Skipped(reason: $0.reason, count: $0.count) }
        withdrawn = share.withdrawn
        unfollowed = share.unfollowed
        waitsForConnect = share.waitsForConnect
    }
}

struct CommandRequest: Decodable {
    var line: String
}

struct LogEntryJSON: ResponseEncodable {
    var number: Int
    var kind: String
    var text: String

    init(_ entry: OutputLog.Entry) {
        number = entry.number
        kind = entry.kind.rawValue
        text = entry.text
    }
}
