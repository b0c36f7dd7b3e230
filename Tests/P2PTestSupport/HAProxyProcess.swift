import Foundation

/// Debian's HAProxy in TCP mode in front of directory servers, as `make run-cluster` will run
/// it: a private configuration in a temporary folder, in the foreground, stopped by `stop()`.
public final class HAProxyProcess: Sendable {
    public let process: ChildProcess
    /// Where clients connect (127.0.0.1).
    public let port: Int
    private let folder: TemporaryDirectory

    /// Balances over `backends` (ports on 127.0.0.1), each sent the client's address with
    /// `proxy` (`send-proxy` for v1, `send-proxy-v2`), with HAProxy's TCP health checks;
    /// listening on `bind` of `host` (a simulated host's namespace; this machine's when nil).
    public init(
        backends: [Int], proxy: String = "send-proxy-v2", bind: String = "127.0.0.1",
        inside host: SimulatedInternet.Host? = nil
    ) async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy") else {
            throw SetupError("/usr/sbin/haproxy is missing: run ./setup.sh (make test does)")
        }
        folder = try TemporaryDirectory()
        port = try unusedPort()
        let servers = backends.enumerated().map { index, backend in
            "    server s\(index) 127.0.0.1:\(backend) \(proxy) check inter 500ms"
        }
        let configuration = """
            global
                maxconn 1024
            defaults
                mode tcp
                # A connection refused by a server that died goes to another one.
                retries 3
                option redispatch 1
                timeout connect 2s
                timeout client 10s
                timeout server 10s
            frontend directory
                bind \(bind):\(port)
                default_backend servers
            backend servers
                balance roundrobin
            \(servers.joined(separator: "\n"))

            """
        let path = folder.file("haproxy.cfg")
        try configuration.write(toFile: path, atomically: true, encoding: .utf8)
        // -db: stay in the foreground, logs on stderr.
        let (executable, arguments) = SimulatedInternet.command(in: host, "/usr/sbin/haproxy", ["-db", "-f", path])
        process = try ChildProcess(executable, arguments)
        let port = self.port
        try await waitUntil("haproxy listening on \(port)") {
            guard process.isRunning else {
                throw SetupError("haproxy exited: \(process.stderrLines.suffix(5))")
            }
            guard host != nil else { return isListening(port) }
            let (shell, probe) = SimulatedInternet.command(
                in: host, "/bin/bash", ["-c", ": </dev/tcp/127.0.0.1/\(port)"])
            return try await ChildProcess(shell, probe).waitForExit(timeout: 10) == 0
        }
    }

    public func stop() async {
        await process.stop()
        folder.remove()
    }
}
