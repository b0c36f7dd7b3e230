import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import P2PTestSupport
import Testing

/// Issue 45: `p2p-client --web`: the JSON API and the page drive the shell's own session, and
/// nothing answers without the token.
@Suite struct ClientWebTests {
    /// A client with its web face; where it listens and its token, from the line it prints.
    static func webClient(
        _ environment: AcceptanceTests.Environment, _ name: String, extra: [String] = []
    ) async throws -> (client: ClientProcess, port: Int, token: String) {
        let client = try ClientProcess(
            serverPort: environment.serverPort, timeURL: environment.time.url,
            directory: try environment.clientFolder(name), extraArguments: ["--web", "127.0.0.1:0"] + extra)
        var ready: String?
        try await waitUntil("the web address on stderr") {
            ready = client.process.stderrLines.first { $0.contains("web interface at http://127.0.0.1:") }
            return ready != nil
        }
        let address = try #require(ready?.split(separator: " ").last)
        let port = try #require(Int(address.split(separator: ":")[2].prefix { $0.isNumber }))
        let token = try #require(address.split(separator: "=").last.map(String.init))
        return (client, port, token)
    }

    static func json(_ response: TestClient.Response) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(buffer: response.body ?? ByteBuffer()), options: [])
    }

    static func bearer(_ token: String) -> HTTPFields { [.authorization: "Bearer \(token)"] }

    @Test func theAPIDrivesTheShellsSessionAndNeedsTheToken() async throws {
        try await AcceptanceTests.Environment.with { environment in
            let ownerFolder = try environment.clientFolder("owner")
            let content = Data((0..<200_000).map { UInt8($0 % 251) })
            try content.write(to: URL(fileURLWithPath: "\(ownerFolder)/notes.bin"))
            let owner = try environment.client("owner")
            let description = "<script>alert(1)</script> & <b>notes</b>"
            for command in ["REGISTER alice", "CONNECT alice", "PUBLISH notes.bin \(description)"] {
                #expect(try await owner.run(command).hasSuffix(" OK"))
            }
            let (web, port, token) = try await Self.webClient(environment, "web")
            for command in ["REGISTER bob", "CONNECT bob"] { #expect(try await web.run(command).hasSuffix(" OK")) }

            try await TestClient.withClient(host: "127.0.0.1", port: port) { http in
                // No token, a wrong one: 401, for the page and the API alike.
                #expect(try await http.get("/api/v1/session").status == .unauthorized)
                #expect(try await http.get("/").status == .unauthorized)
                #expect(try await http.get("/api/v1/session", headers: Self.bearer("0" + token.dropFirst())).status
                    == .unauthorized)
                #expect(try await http.get("/api/v1/session?token=nope").status == .unauthorized)

                // The page opened with the token sets a cookie the page's requests then carry.
                let page = try await http.get("/?token=\(token)")
                #expect(page.status == .ok)
                let cookie = try #require(page.headers[.setCookie])
                #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"))
                let withCookie = try await http.get(
                    "/api/v1/session", headers: [.cookie: String(cookie.prefix { $0 != ";" })])
                #expect(withCookie.status == .ok)
                let session = try #require(try Self.json(withCookie) as? [String: Any])
                #expect(session["user"] as? String == "bob")

                // A search shows whether the owner is online; names and descriptions come as data.
                let found = try await http.get("/api/v1/search?q=notes", headers: Self.bearer(token))
                #expect(found.status == .ok)
                let hits = try #require(try Self.json(found) as? [[String: Any]])
                #expect(hits.count == 1)
                #expect(hits.first?["owner"] as? String == "alice" && hits.first?["online"] as? Bool == true)
                #expect(hits.first?["description"] as? String == description)

                // A download asked for by the page: listed as it runs, verified at the end.
                var headers = Self.bearer(token)
                headers[.contentType] = "application/json"
                let started = try await http.post(
                    "/api/v1/downloads", headers: headers,
                    body: ByteBuffer(string: #"{"owner": "alice", "file": "notes.bin"}"#))
                #expect(started.status == .accepted)
                let id = try #require((try Self.json(started) as? [String: Any])?["id"] as? Int)
                var state: [String: Any] = [:]
                try await waitUntil("the download done") {
                    let listed = try Self.json(try await http.get("/api/v1/transfers", headers: Self.bearer(token)))
                    state = (listed as? [[String: Any]])?.first { $0["id"] as? Int == id } ?? [:]
                    return state["state"] as? String != "running" && !state.isEmpty
                }
                #expect(state["state"] as? String == "done" && state["verified"] as? Bool == true, "\(state)")
                try expectSameBytes(
                    Data(contentsOf: URL(fileURLWithPath: environment.folder.file("web/notes.bin"))), content)

                // A command from the page runs in the shell's session and its lines come back.
                let ran = try await http.post(
                    "/api/v1/commands", headers: headers, body: ByteBuffer(string: #"{"line": "LIST_USERS"}"#))
                let lines = (try Self.json(ran) as? [[String: Any]])?.compactMap { $0["text"] as? String } ?? []
                #expect(lines.first == "c> LIST_USERS OK" && lines.contains { $0.hasPrefix("alice ") }, "\(lines)")
                // The page cannot end the client; a body that is not JSON is refused.
                let quit = try await http.post(
                    "/api/v1/commands", headers: headers, body: ByteBuffer(string: #"{"line": "quit"}"#))
                #expect(quit.status == .badRequest)
                let form = try await http.post(
                    "/api/v1/commands", headers: Self.bearer(token), body: ByteBuffer(string: "line=LIST_USERS"))
                #expect(form.status == .unsupportedMediaType)
            }
            // And the other way: the shell lists the download the page started.
            let before = web.process.stdoutLines.count
            #expect(try await web.run("TRANSFERS") == "c> TRANSFERS OK")
            try await waitUntil("the transfer listed") { web.process.stdoutLines.count > before + 1 }
            #expect(web.process.stdoutLines[before + 1].hasSuffix(", done, verified"))
            _ = try await web.finish()
            _ = try await owner.finish()
        }
    }

    /// docs/client-api.json against the running client: every path answers 401 without the
    /// token, and with it each GET answers 200 with what its schema requires (each item's
    /// required properties, of the documented types).
    @Test func theOpenAPIDocumentDescribesTheRunningClient() async throws {
        let documentPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../docs/client-api.json").standardized.path
        try await AcceptanceTests.Environment.with { environment in
            let ownerFolder = try environment.clientFolder("owner")
            try Data("hello\n".utf8).write(to: URL(fileURLWithPath: "\(ownerFolder)/notes.txt"))
            let owner = try environment.client("owner")
            for command in ["REGISTER alice", "CONNECT alice", "PUBLISH notes.txt hello"] {
                #expect(try await owner.run(command).hasSuffix(" OK"))
            }
            let (web, port, token) = try await Self.webClient(environment, "web")
            let commands = ["REGISTER bob", "CONNECT bob", "SHARE .", "GET_FILE alice notes.txt copy.txt", "WISH notes"]
            for command in commands {
                #expect(try await web.run(command).hasSuffix(" OK"), "\(command)")
            }
            // Every documented path, with its parameters filled in.
            let samples = [
                "/api/v1/users/{name}/files": "/api/v1/users/alice/files", "/api/v1/search": "/api/v1/search?q=notes",
                "/api/v1/wishlist/{id}": "/api/v1/wishlist/1",
            ]
            try await TestClient.withClient(host: "127.0.0.1", port: port) { http in
                let document = try #require(
                    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: documentPath)))
                        as? [String: Any])
                let paths = try #require(document["paths"] as? [String: [String: Any]])
                let components = document["components"] as? [String: Any]
                let schemas = try #require(components?["schemas"] as? [String: [String: Any]])
                for (path, operations) in paths.sorted(by: { $0.key < $1.key }) {
                    let uri = samples[path] ?? path
                    for method in operations.keys {
                        let methods: [String: HTTPRequest.Method] = ["get": .get, "post": .post, "delete": .delete]
                        let request = TestClient.Request(uri, method: methods[method] ?? .options)
                        #expect(try await http.execute(request).status == .unauthorized, "\(method) \(uri)")
                    }
                    guard let get = operations["get"] as? [String: Any], path != "/api/v1/events" else { continue }
                    let response = try await http.get(uri, headers: Self.bearer(token))
                    #expect(response.status == .ok, "GET \(uri)")
                    let ok = (get["responses"] as? [String: Any])?["200"] as? [String: Any]
                    let schema = ((ok?["content"] as? [String: Any])?["application/json"] as? [String: Any])?["schema"]
                        as? [String: Any]
                    let body = try Self.json(response)
                    let (itemSchema, items): ([String: Any]?, [Any]) =
                        schema?["type"] as? String == "array"
                        ? ((schema?["items"] as? [String: Any]), body as? [Any] ?? [])
                        : (schema, [body])
                    let name = (itemSchema?["$ref"] as? String)?.split(separator: "/").last.map(String.init)
                    let resolved = name.flatMap { schemas[$0] } ?? [:]
                    #expect(!resolved.isEmpty, "GET \(uri): no schema")
                    #expect(!items.isEmpty, "GET \(uri) gave nothing to check")
                    for item in items {
                        let object = try #require(item as? [String: Any], "GET \(uri): \(item)")
                        for key in resolved["required"] as? [String] ?? [] {
                            #expect(object[key] != nil, "GET \(uri): \(key) missing in \(object)")
                        }
                        let properties = resolved["properties"] as? [String: [String: Any]] ?? [:]
                        for (key, value) in object {
                            let type = properties[key]?["type"] as? String
                            #expect(type != nil, "GET \(uri): \(key) undocumented")
                            switch type {
                            case "string": #expect(value is String, "GET \(uri): \(key)")
                            case "integer", "number": #expect(value is NSNumber, "GET \(uri): \(key)")
                            case "boolean": #expect(value is Bool, "GET \(uri): \(key)")
                            case "array": #expect(value is [Any], "GET \(uri): \(key)")
                            default: #expect(value is [String: Any], "GET \(uri): \(key)")
                            }
                        }
                    }
                }
            }
            _ = try await web.finish()
            _ = try await owner.finish()
        }
    }

    /// `--no-shell`: a service, used through the API only, that disconnects its user and ends on
    /// SIGTERM.
    @Test func withoutAShellItRunsUntilSIGTERM() async throws {
        try await AcceptanceTests.Environment.with { environment in
            let (service, port, token) = try await Self.webClient(environment, "service", extra: ["--no-shell"])
            var json = Self.bearer(token)
            json[.contentType] = "application/json"
            let headers = json
            try await TestClient.withClient(host: "127.0.0.1", port: port) { http in
                for line in ["REGISTER carol", "CONNECT carol"] {
                    let ran = try await http.post(
                        "/api/v1/commands", headers: headers, body: ByteBuffer(string: "{\"line\": \"\(line)\"}"))
                    let texts = (try Self.json(ran) as? [[String: Any]])?.compactMap { $0["text"] as? String }
                    // The result line, among the reasons printed before it.
                    let result = "c> \(line.split(separator: " ")[0]) OK"
                    #expect(texts?.contains(result) == true, "\(line): \(texts ?? [])")
                }
            }
            let others = try await environment.run(["REGISTER dave", "CONNECT dave", "LIST_USERS"], in: "other")
            #expect(others.contains { $0.hasPrefix("carol ") }, "\(others)")
            service.process.signal(SIGTERM)
            #expect(try await service.process.waitForExit() == 0)
            #expect(service.process.stdoutLines.last == "c> DISCONNECT OK")
        }
    }
}
