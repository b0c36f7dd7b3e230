import ArgumentParser
import Dispatch
import Foundation
import Logging
import Hummingbird
import P2PClient
import P2PClientWeb
import P2PIdentity
import P2PNetworkSupport
import P2PTimeClient
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

extension TimeServiceClient.Method: ExpressibleByArgument {}

#if canImport(Glibc)
    // glibc's mallopt and two of its parameters (<malloc.h>, which the Glibc module leaves out).
    @_silgen_name("mallopt") private func mallopt(_ parameter: Int32, _ value: Int32) -> Int32
    private let mallocTrimThreshold: Int32 = -1
    private let mallocMmapThreshold: Int32 = -3
#endif

@main
struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2p-client",
        abstract: "The P2P file-sharing client: a shell (c> ) for the directory server that also serves your files.",
        discussion: """
            Type `help` at the prompt for the commands. On a terminal the prompt has line editing, \
            history (Up, Ctrl+R) and Tab completion. Without a terminal it runs the lines of stdin \
            in order and exits at end of input: 0 when every command succeeded, 1 when any failed.
            """)

    // Optional for the parser, required by `validate()`: so that a mistyped option is named
    // first rather than drowned in the full help.
    @Option(name: .shortAndLong, help: "Directory server, by name or IP (required).")
    var server: String?

    @Option(name: .shortAndLong, help: "Directory server port, 1024-65535 (required).")
    var port: Int?

    @Option(help: "Time service URL.")
    var timeService = "http://localhost:8000"

    @Option(help: "How to ask the time service: soap (get_time) or plain (GET /time).")
    var timeMethod: TimeServiceClient.Method = .soap

    @Option(
        help: """
            The share folder: where the files you PUBLISH by relative name are (default: the current \
            folder). Peers get only the files you published.
            """)
    var shareDir: String?

    @Option(
        name: .customLong("share"),
        help: """
            A folder to share whole once a user is connected, as the SHARE command does (repeatable).
            """)
    var shareFolders: [String] = []

    @Option(
        help: """
            Cap on the rate this client uploads at, for all peers together, per second: 500K, 10M, 1G \
            (powers of 1024; at least 1K). Default: no cap.
            """)
    var uploadLimit: String?

    @Option(help: "How many peers this client serves at once; more are answered GET_FILE FAIL (code 2).")
    var maxUploads: Int = 32

    @Option(help: "Connections one address may have open to this client's file server at once; more are refused.")
    var maxPeerConnectionsPerAddress: Int = 8

    @Option(help: "Seconds an upload may go without the downloader taking a byte before it is cut.")
    var uploadStallTimeout: Double = 30

    @Option(
        help: """
            Address the file server for peers listens on while a user is connected (default: every \
            IPv6 and IPv4 address, one dual-stack socket; every IPv4 address without IPv6).
            """)
    var peerHost: String?

    @Flag(
        help: """
            Download with plain GET_FILE only, as from a third-party peer: no size, digest check, \
            resume or several owners at once.
            """)
    var plainGetFile = false

    @Flag(
        help: """
            Do not keep a control connection to the directory server while connected: the server \
            then checks this client's port like a third-party client's (which fails behind a NAT).
            """)
    var noControlConnection = false

    @Option(help: "Where the prompt keeps its history on a terminal; empty for none (default: ~/.p2p_client_history).")
    var historyFile: String?

    @Option(
        help: """
            Where the client keeps what it must remember between runs: the names it published, \
            per directory server and user, which are all it serves to peers (default: \
            $XDG_STATE_HOME/p2p-client, else ~/.local/state/p2p-client).
            """)
    var stateDir: String?

    @Option(
        help: """
            The largest file GET_FILE accepts from an owner that announces its size: 10G, 500M \
            (powers of 1024). Default: whatever fits on the disk.
            """)
    var maxDownloadSize: String?

    @Option(
        help: """
            This client's key, made at first use (mode 0600): the directory server binds the users \
            you register to it (default: $XDG_CONFIG_HOME/p2p-client/identity, else \
            ~/.config/p2p-client/identity).
            """)
    var identity: String?

    @Flag(help: "Run without a key: users are known to the server by their address only, as with third-party clients.")
    var noIdentity = false

    @Flag(help: "Log each file served to peers on stderr.")
    var verbose = false

    @Option(
        help: """
            Serve a web interface and a JSON API (/api/v1) for this session at [ADDR:]PORT \
            (127.0.0.1 unless an address is given; 0 for a free port). Every request needs the token \
            printed at start: open the address printed with it.
            """)
    var web: String?

    @Option(help: "With --web: the token in this file (made, mode 0600, when missing) instead of a new one each run.")
    var webTokenFile: String?

    @Option(help: "Seconds between two runs of the saved searches (WISH); they also run at CONNECT.")
    var wishlistInterval: Double = 300

    @Flag(help: "With --web: no shell; run as a service until SIGTERM or SIGINT (which disconnect first, as QUIT).")
    var noShell = false

    /// Whatever is not an option of ours, kept so that `validate()` can name it before
    /// complaining about anything else.
    @Argument(parsing: .allUnrecognized, help: .hidden)
    var unrecognized: [String] = []

    func validate() throws {
        if let first = unrecognized.first {
            throw ValidationError(first.hasPrefix("-") ? "Unknown option '\(first)'" : "Unexpected argument '\(first)'")
        }
        guard server != nil else { throw ValidationError("Missing expected argument '--server <server>'") }
        guard let port else { throw ValidationError("Missing expected argument '--port <port>'") }
        guard (1024...65535).contains(port) else { throw ValidationError("--port must be 1024-65535") }
        if let uploadLimit, UploadLimits.parseRate(uploadLimit) == nil {
            throw ValidationError("--upload-limit \(uploadLimit): give a rate such as 500K, 10M or 1G (at least 1K)")
        }
        guard maxUploads >= 1 else { throw ValidationError("--max-uploads must be at least 1") }
        guard maxPeerConnectionsPerAddress >= 1 else {
            throw ValidationError("--max-peer-connections-per-address must be at least 1")
        }
        guard uploadStallTimeout >= 0.1 else { throw ValidationError("--upload-stall-timeout must be at least 0.1") }
        guard wishlistInterval >= 0.1 else { throw ValidationError("--wishlist-interval must be at least 0.1") }
        if let web, ClientWebAddress(parsing: web) == nil {
            throw ValidationError("--web \(web): give PORT or ADDR:PORT, such as 8080 or 0.0.0.0:8080")
        }
        if noShell, web == nil { throw ValidationError("--no-shell needs --web (there would be no way to use it)") }
        if webTokenFile != nil, web == nil { throw ValidationError("--web-token-file needs --web") }
        if let maxDownloadSize, UploadLimits.parseRate(maxDownloadSize) == nil {
            throw ValidationError(
                "--max-download-size \(maxDownloadSize): give a size such as 500M or 10G (at least 1K)")
        }
        do {
            _ = try TimeServiceClient(url: timeService)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func run() async throws {
        guard let server, let port else { return }
        // Writing to a peer that went away must fail the write, not kill the client.
        signal(SIGPIPE, SIG_IGN)
        #if canImport(Glibc)
            // Transfers allocate buffers of megabytes (uploads' 4 MiB slices under TLS, TLS's
            // own buffers): from the heap and kept there, not fresh zeroed pages from mmap each
            // time. Without it a TLS download ran at about 0.73 of a plain one here, with it
            // about as fast (`make bench`, tls). Freed memory beyond 64 MiB goes back.
            _ = mallopt(mallocMmapThreshold, 16 << 20)
            _ = mallopt(mallocTrimThreshold, 64 << 20)
        #endif
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = verbose ? .info : .warning
            return handler
        }
        let folder: SharedFolder
        do {
            folder = try SharedFolder(path: shareDir ?? FileManager.default.currentDirectoryPath)
        } catch {
            throw ValidationError("--share-dir \(shareDir ?? "."): no such folder")
        }
        let interactive = isatty(STDIN_FILENO) == 1
        let stderrIsTerminal = isatty(STDERR_FILENO) == 1
        let showProgress: @Sendable (String?) -> Void = { text in
            // Rewrite one line in place; nil clears it.
            writeErr("\r\u{1B}[K" + (text ?? ""))
        }
        let plainOutput = ClientOutput(
            line: { writeOut($0 + "\n") },
            diagnostic: { writeErr("p2p-client: \($0)\n") },
            progress: stderrIsTerminal && !noShell ? showProgress : nil)
        // With the web face, what the shell prints shows in its console too.
        let log = OutputLog()
        let output = web == nil ? plainOutput : log.tee(plainOutput)
        var identityKey: IdentityKey?
        let identityPath = identity ?? IdentityKey.defaultPath()
        if !noIdentity {
            do {
                // Made at first use, quietly: IDENTITY and help show it.
                identityKey = try IdentityKey.loadOrCreate(at: identityPath).key
            } catch {
                throw ValidationError("--identity: \(error)")
            }
        }
        let session = ClientSession(
            directory: DirectoryClient(host: server, port: port, identity: identityKey),
            timeService: try TimeServiceClient(url: timeService, method: timeMethod),
            folder: folder,
            uploadLimits: UploadLimits(
                bytesPerSecond: uploadLimit.flatMap(UploadLimits.parseRate), maxUploads: maxUploads,
                maxConnectionsPerAddress: maxPeerConnectionsPerAddress,
                stallTimeout: .milliseconds(Int64(uploadStallTimeout * 1000))),
            peerHost: peerHost,
            plainGetFile: plainGetFile,
            controlConnection: !noControlConnection,
            stateDirectory: stateDir ?? PublishedRecord.defaultStateDirectory,
            maxDownloadSize: maxDownloadSize.flatMap(UploadLimits.parseRate).map(Int64.init),
            identityFile: noIdentity ? nil : identityPath,
            wishlistInterval: .milliseconds(Int64(wishlistInterval * 1000)),
            output: output,
            logger: Logger(label: "p2p-client"))
        for path in shareFolders {
            do {
                try await session.shareAtConnect(path)
            } catch {
                throw ValidationError("--share \(path): \(error)")
            }
        }
        // Line editing only when a person types at a terminal and sees the prompt; piped input
        // keeps the plain behaviour exactly.
        let editor = interactive && isatty(STDOUT_FILENO) == 1 ? LineEditor(historyFile: historyPath) : nil
        let terminal = TerminalSettings()

        // Ctrl+C, SIGTERM, SIGHUP: as QUIT (a second one ends the client at once).
        let signalled = Atomic<Bool>(false)
        TerminationSignals.install { number in
            if number == SIGCONT {
                editor?.redrawIfReading()
                return
            }
            guard !signalled.exchange(true, ordering: .acquiringAndReleasing) else {
                FileDownloader.discardUnfinished()
                terminal.restore()
                Glibc.exit(130)
            }
            Task {
                if interactive { writeOut("\n") }
                await session.shutdown()
                terminal.restore()
                Glibc.exit(await exitStatus(session, interactive: interactive))
            }
        }

        Task { await session.runWishlist() }
        if let web, let address = ClientWebAddress(parsing: web) {
            let token: WebToken
            do {
                token = try webTokenFile.map { path throws(WebToken.FileError) in try WebToken.loadOrCreate(at: path) }
                    ?? .random()
            } catch {
                throw ValidationError("--web-token-file: \(error)")
            }
            let application = buildClientWebApplication(
                address, session: session, log: log, token: token, logger: Logger(label: "p2p-client.web"),
                onServerRunning: { channel in
                    let port = channel.localAddress?.port ?? address.port
                    let host = address.host == "0.0.0.0" || address.host == "::" ? "127.0.0.1" : address.host
                    writeErr(
                        "p2p-client: web interface at http://\(DualStack.hostAndPort(host, port))/?token=\(token)\n")
                })
            let serviceOnly = noShell
            Task {
                do {
                    try await application.run()
                } catch {
                    writeErr("p2p-client: the web interface stopped: \(error)\n")
                    // A service without its web face is of no use to anyone.
                    if serviceOnly { Glibc.exit(1) }
                }
            }
        }
        if noShell {
            // A service: until SIGTERM or SIGINT (handled above, as QUIT).
            while true { try? await Task.sleep(for: .seconds(3600)) }
        }

        if interactive { await session.checkServerReachable() }
        let reader = LineReader(editor: editor)
        while let line = await reader.next(prompt: interactive ? ClientSession.prompt : nil) {
            guard await session.execute(line: line) else {
                throw ExitCode(await exitStatus(session, interactive: interactive))
            }
        }
        // End of input acts like QUIT.
        if interactive { writeOut("\n") }
        await session.shutdown()
        throw ExitCode(await exitStatus(session, interactive: interactive))
    }

    /// `--history-file`, or ~/.p2p_client_history; nil for none.
    private var historyPath: String? {
        if let historyFile { return historyFile.isEmpty ? nil : historyFile }
        guard let home = ProcessInfo.processInfo.environment["HOME"], !home.isEmpty else { return nil }
        return home + "/.p2p_client_history"
    }
}

/// A scripted run (stdin not a terminal) exits 1 when any command failed, so that scripts can
/// check it; an interactive one exits 0.
private func exitStatus(_ session: ClientSession, interactive: Bool) async -> Int32 {
    interactive ? 0 : (await session.failures > 0 ? 1 : 0)
}

/// Reads stdin one line at a time on its own thread (a blocking read must not hold a
/// concurrency thread), through the line editor on a terminal, else printing the prompt just
/// before each plain read.
final class LineReader: Sendable {
    private let editor: LineEditor?

    init(editor: LineEditor?) {
        self.editor = editor
    }

    func next(prompt: String?) async -> String? {
        let editor = self.editor
        return await WorkerThread.run(named: "p2p-read-line") { () -> String? in
            if let editor { return editor.readLine(prompt: prompt ?? "") }
            if let prompt { writeOut(prompt) }
            return readLine(strippingNewline: true)
        }
    }
}

private func writeOut(_ text: String) {
    FileHandle.standardOutput.write(Data(text.utf8))
}

private func writeErr(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}
