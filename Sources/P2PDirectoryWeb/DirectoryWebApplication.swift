import Foundation
import Hummingbird
import Logging
import NIOCore
import P2PDirectory
import P2PNetworkSupport
import P2PProtocol
import Prometheus

/// Where the directory server's web page listens (`p2p-server --http-host/--http-port`).
public struct DirectoryWebConfiguration: Sendable {
    public var host: String
    public var port: Int

    public init(host: String = "127.0.0.1", port: Int) {
        self.host = host
        self.port = port
    }
}

/// Builds the directory's read-only web side, on Hummingbird:
/// - `GET /`: how many users and files there are, who is online (name, address, port; the
///   first 500 by name), and a search box;
/// - `GET /search?q=...`: the search, as SEARCH answers it;
/// - `GET /user?name=...`: a user's files with their descriptions;
/// - `GET /metrics`: the server's metrics in Prometheus' text format;
/// - `GET /health`: 200 while the store answers, 503 otherwise.
///
/// Everything is read through the store interface, so the page shows what the protocol shows,
/// and every name and description is escaped: they come from anyone.
///
/// - Parameters:
///   - beforeScrape: called before `/metrics` is rendered, to bring gauges up to date.
public func buildDirectoryWebApplication(
    _ configuration: DirectoryWebConfiguration,
    store: any DirectoryStore,
    registry: PrometheusCollectorRegistry,
    beforeScrape: @escaping @Sendable () -> Void = {},
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let router = Router()
    DirectoryWebController(store: store, registry: registry, beforeScrape: beforeScrape).register(on: router)
    return Application(
        router: router,
        configuration: .init(
            address: .hostname(DualStack.unbracketed(configuration.host), port: configuration.port),
            serverName: "p2p-server"),
        onServerRunning: onServerRunning,
        logger: logger)
}

struct DirectoryWebController: Sendable {
    let store: any DirectoryStore
    let registry: PrometheusCollectorRegistry
    let beforeScrape: @Sendable () -> Void
    /// The front page's numbers and online users, read at most once a second however many
    /// people load it: counting a large directory takes a while, and readers arriving together
    /// would otherwise each count it (in `make bench`, 16 readers cost the directory up to a
    /// quarter of its throughput without this).
    let front: RecentValue<FrontPage>

    init(store: any DirectoryStore, registry: PrometheusCollectorRegistry, beforeScrape: @escaping @Sendable () -> Void)
    {
        self.store = store
        self.registry = registry
        self.beforeScrape = beforeScrape
        front = RecentValue(maxAge: .seconds(1)) {
            FrontPage(overview: try await store.overview(), online: try await store.connectedUsers())
        }
    }

    struct FrontPage: Sendable {
        var overview: DirectoryOverview
        var online: [ConnectedUser]
    }

    /// The most online users listed on the front page.
    static let onlineShown = 500

    func register(on router: Router<BasicRequestContext>) {
        router.get("/", use: home)
        router.get("/search", use: search)
        router.get("/user", use: user)
        router.get("/metrics") { _, _ in
            beforeScrape()
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        router.get("/health") { _, _ -> Response in
            // A LIST_USERS for nobody: 1 while the store answers, its "other" code when it fails.
            let reply = await store.read(.listUsers(requester: ""))
            let healthy = reply != .status(DirectoryOperation.listUsers.otherErrorCode)
            return Response(
                status: healthy ? .ok : .serviceUnavailable, headers: [.contentType: "text/plain"],
                body: .init(byteBuffer: ByteBuffer(string: healthy ? "ok\n" : "store not answering\n")))
        }
    }

    @Sendable func home(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let front = try await front.value()
        let overview = front.overview
        let online = front.online
        var body = """
            <p class="summary">\(counted(overview.users, "user")) registered, \(overview.connectedUsers) online, \
            \(counted(overview.files, "file")) published.</p>
            \(Self.searchForm(""))
            <h2>Online</h2>
            """
        if online.isEmpty {
            body += "<p>Nobody is online.</p>"
        } else {
            body += "<table id=\"online\"><tr><th>User</th><th>Address</th><th>Port</th></tr>"
            for user in online.prefix(Self.onlineShown) {
                body +=
                    "<tr><td>\(Self.userLink(user.name))</td><td>\(html(user.ip))</td><td>\(html(user.port))</td></tr>"
            }
            body += "</table>"
            if online.count > Self.onlineShown {
                body += "<p>and \(online.count - Self.onlineShown) more.</p>"
            }
        }
        return Self.page(title: "P2P directory", body: body)
    }

    @Sendable func search(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let query = request.uri.queryParameters.get("q") ?? ""
        let hits = try await store.search(query)
        var body = Self.searchForm(query) + "<h2>Files matching \u{201C}\(html(query))\u{201D}</h2>"
        if hits.isEmpty {
            body += "<p>No file matches.</p>"
        } else {
            body += "<table id=\"hits\"><tr><th>User</th><th>File</th><th>Description</th></tr>"
            for hit in hits {
                body += "<tr><td>\(Self.userLink(hit.owner))</td><td>\(html(hit.name))</td>"
                body += "<td>\(html(hit.description))</td></tr>"
            }
            body += "</table>"
        }
        return Self.page(title: "Search: \(query)", body: body)
    }

    @Sendable func user(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let name = request.uri.queryParameters.get("name") ?? ""
        guard let files = try await store.files(of: name) else {
            return Self.page(
                title: "No such user", body: "<p>No user \u{201C}\(html(name))\u{201D}.</p>", status: .notFound)
        }
        var body = "<h2>Files of \(html(name))</h2>"
        if files.isEmpty {
            body += "<p>No files published.</p>"
        } else {
            body += "<table id=\"files\"><tr><th>File</th><th>Description</th></tr>"
            for file in files {
                body += "<tr><td>\(html(file.name))</td><td>\(html(file.description))</td></tr>"
            }
            body += "</table>"
        }
        return Self.page(title: "Files of \(name)", body: body)
    }

    static func searchForm(_ query: String) -> String {
        """
        <form action="/search" method="get"><input name="q" value="\(html(query))" \
        placeholder="words of a file name or description"> <button type="submit">Search</button></form>
        """
    }

    static func userLink(_ name: String) -> String {
        var allowed = CharacterSet.urlQueryAllowed
        allowed.remove(charactersIn: "&=+#?")
        let encoded = name.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
        return "<a href=\"/user?name=\(html(encoded))\">\(html(name))</a>"
    }

    static func page(title: String, body: String, status: HTTPResponse.Status = .ok) -> Response {
        let document = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>\(html(title))</title>
            <style>
            body { font-family: sans-serif; margin: 2em; } table { border-collapse: collapse; }
            td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
            </style></head>
            <body><h1><a href="/">P2P directory</a></h1>
            \(body)
            </body></html>
            """
        return Response(
            status: status, headers: [.contentType: "text/html; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: document)))
    }
}

/// A value read at most once per `maxAge`: callers within that time get the last one, and
/// callers that arrive while it is being read wait for that read instead of starting another.
actor RecentValue<Value: Sendable> {
    private let maxAge: Duration
    private let read: @Sendable () async throws -> Value
    private var last: (value: Value, at: ContinuousClock.Instant)?
    private var reading: Task<Value, any Error>?

    init(maxAge: Duration, read: @escaping @Sendable () async throws -> Value) {
        self.maxAge = maxAge
        self.read = read
    }

    func value() async throws -> Value {
        if let last, ContinuousClock.now - last.at < maxAge { return last.value }
        if let reading { return try await reading.value }
        let task = Task { try await read() }
        reading = task
        defer { reading = nil }
        let value = try await task.value
        last = (value, ContinuousClock.now)
        return value
    }
}

/// `1 user`, `2 users`.
func counted(_ count: Int, _ noun: String) -> String {
    "\(count) \(noun)\(count == 1 ? "" : "s")"
}

/// `text` for HTML text and attribute values: `&`, `<`, `>`, `"` and `'` escaped.
func html(_ text: String) -> String {
    var result = ""
    result.reserveCapacity(text.utf8.count)
    for character in text {
        switch character {
        case "&": result += "&amp;"
        case "<": result += "&lt;"
        case ">": result += "&gt;"
        case "\"": result += "&quot;"
        case "'": result += "&#39;"
        default: result.append(character)
        }
    }
    return result
}

extension PrometheusMetricsFactory {
    /// The factory `p2p-server` makes its metrics with: request durations in buckets from
    /// 50 us (``DirectoryMetrics/durationBuckets``), where most requests end, instead of the
    /// default's first bucket of 5 ms.
    public static func directory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["p2p_request_duration_seconds"] = DirectoryMetrics.durationBuckets
        return factory
    }
}
