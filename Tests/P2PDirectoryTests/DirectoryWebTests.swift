import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import P2PDirectory
import P2PDirectoryWeb
import P2PProtocol
import P2PTestSupport
import Prometheus
import Testing

/// The directory's web side: the page through the router, with hostile names and descriptions,
/// and /metrics around real requests to a real server.
@Suite struct DirectoryWebTests {
    static func app(_ store: any DirectoryStore, registry: PrometheusCollectorRegistry = .init())
        -> some ApplicationProtocol
    {
        buildDirectoryWebApplication(
            DirectoryWebConfiguration(port: 0), store: store, registry: registry, logger: Logger(label: "test-web"))
    }

    static func filledStore() async -> InMemoryDirectoryStore {
        let store = InMemoryDirectoryStore()
        _ = await store.apply([
            .register(user: "alice"), .connect(user: "alice", ip: "10.0.0.1", port: "4000"),
            .publish(user: "alice", fileName: "lecture-notes.pdf", description: "week 1"),
            .register(user: "mallory<b>"), .connect(user: "mallory<b>", ip: "10.0.0.2", port: "5000"),
            .publish(
                user: "mallory<b>", fileName: "x.html",
                description: "<script>alert(1)</script> \" onmouseover=\"steal()"),
            .register(user: "offline"),
        ])
        return store
    }

    @Test func homePageShowsCountsAndWhoIsOnlineEscaped() async throws {
        let store = await Self.filledStore()
        try await Self.app(store).test(.router) { client in
            try await client.execute(uri: "/", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "text/html; charset=utf-8")
                let body = String(buffer: response.body)
                #expect(body.contains("3 users registered, 2 online, 2 files published."))
                #expect(body.contains("<td>10.0.0.1</td><td>4000</td>"))
                #expect(body.contains("mallory&lt;b&gt;"))
                #expect(!body.contains("mallory<b>"))
                #expect(!body.contains(">offline<"))
            }
        }
    }

    @Test func userPageAndSearchEscapeWhatAnyoneWrote() async throws {
        let store = await Self.filledStore()
        try await Self.app(store).test(.router) { client in
            try await client.execute(uri: "/user?name=mallory%3Cb%3E", method: .get) { response in
                #expect(response.status == .ok)
                let body = String(buffer: response.body)
                #expect(body.contains("&lt;script&gt;alert(1)&lt;/script&gt; &quot; onmouseover=&quot;steal()"))
                #expect(!body.contains("<script>"))
            }
            try await client.execute(uri: "/user?name=nobody", method: .get) { response in
                #expect(response.status == .notFound)
            }
            try await client.execute(uri: "/search?q=LECT", method: .get) { response in
                let body = String(buffer: response.body)
                #expect(body.contains("<td>lecture-notes.pdf</td><td>week 1</td>"))
                #expect(body.contains("value=\"LECT\""))
            }
            try await client.execute(uri: "/search?q=%22%3E%3Cscript%3E", method: .get) { response in
                let body = String(buffer: response.body)
                #expect(body.contains("value=\"&quot;&gt;&lt;script&gt;\""))
                #expect(!body.contains("\"><script>"))
            }
        }
    }

    @Test func pageIsReadOnlyAndHealthFollowsTheStore() async throws {
        let store = await Self.filledStore()
        try await Self.app(store).test(.router) { client in
            try await client.execute(uri: "/", method: .post) { response in
                #expect(response.status != .ok)
            }
            try await client.execute(uri: "/health", method: .get) { response in
                #expect(response.status == .ok)
            }
            try await store.close()
            try await client.execute(uri: "/health", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
            }
        }
    }

    /// /metrics before and after a few real requests: the counters moved by exactly those.
    @Test func metricsCountEveryRequestByOperationAndCode() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let registry = PrometheusCollectorRegistry()
        let server = try await DirectoryHarness(
            dataDirectory: folder.path,
            configuration: .init(host: "127.0.0.1", port: 0, idleTimeout: .seconds(30), maxConnectionsPerAddress: 2),
            metrics: DirectoryMetrics(factory: PrometheusMetricsFactory.directory(registry: registry)))
        func scrape() async throws -> [String: Double] {
            let text = try await Self.app(server.store, registry: registry).test(.router) { client in
                try await client.execute(uri: "/metrics", method: .get) { response in String(buffer: response.body) }
            }
            var values: [String: Double] = [:]
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                let parts = line.split(separator: " ")
                if parts.count == 2, let value = Double(parts[1]) { values[String(parts[0])] = value }
            }
            return values
        }
        _ = try await server.send(.register(user: "warm-up"))
        let before = try await scrape()
        _ = try await server.send(.register(user: "alice"))
        _ = try await server.send(.register(user: "bob"))
        _ = try await server.send(.register(user: "alice"))
        _ = try await server.send(.listUsers(user: "nobody"))
        let after = try await scrape()
        func moved(_ name: String) -> Double { (after[name] ?? 0) - (before[name] ?? 0) }
        #expect(moved(#"p2p_requests_total{operation="REGISTER",code="0"}"#) == 2)
        #expect(moved(#"p2p_requests_total{operation="REGISTER",code="1"}"#) == 1)
        #expect(moved(#"p2p_requests_total{operation="LIST_USERS",code="1"}"#) == 1)
        #expect(moved(#"p2p_request_duration_seconds_count{operation="REGISTER"}"#) == 3)
        #expect(moved("p2p_store_commits_total") >= 1 && moved("p2p_store_commits_total") <= 2)
        #expect(after.keys.contains("p2p_open_connections"))
        // Only the codes an operation can give have series: REGISTER 0-2, LIST_USERS 0-3.
        #expect(after.keys.contains(#"p2p_requests_total{operation="REGISTER",code="2"}"#))
        #expect(!after.keys.contains(#"p2p_requests_total{operation="REGISTER",code="3"}"#))
        #expect(after.keys.contains(#"p2p_requests_total{operation="LIST_USERS",code="3"}"#))
        #expect(!after.keys.contains(#"p2p_requests_total{operation="LIST_USERS",code="4"}"#))
        // Durations in buckets from 50 us (a local request takes well under 5 ms).
        #expect(
            after.keys.contains(#"p2p_request_duration_seconds_bucket{operation="REGISTER",le="5e-05"}"#)
                || after.keys.contains(#"p2p_request_duration_seconds_bucket{operation="REGISTER",le="0.00005"}"#),
            "\(after.keys.filter { $0.contains("bucket") && $0.contains("REGISTER") }.sorted())")
        // Refused connections and bad requests, counted by reason.
        var held: [any Channel] = []
        for _ in 0..<3 {
            held.append(try await ConnectionFairnessTests.hold(server.address, from: "127.0.0.1"))
        }
        try await waitUntil("the third connection refused") { held.filter(\.isActive).count == 2 }
        _ = try await RawConnection.exchange(
            Array("NONSENSE\0".utf8), with: server.address,
            from: SocketAddress(ipAddress: "127.0.0.3", port: 0))
        let afterAbuse = try await scrape()
        #expect(afterAbuse[#"p2p_connections_refused_total{reason="address_limit"}"#] == 1)
        #expect(afterAbuse[#"p2p_bad_requests_total{reason="malformed"}"#] == 1)
        for channel in held where channel.isActive { try await channel.close() }
        try await server.shutdown()
    }
}
