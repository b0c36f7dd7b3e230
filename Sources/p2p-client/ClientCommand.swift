import ArgumentParser
import Dispatch
import Foundation
import Logging
import P2PClient
import P2PTimeClient

#if canImport(Glibc)
    import Glibc
#endif

extension TimeServiceClient.Method: ExpressibleByArgument {}

@main
struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2p-client",
        abstract: "The P2P file-sharing client: a shell (c> ) for the directory server that also serves your files.",
        discussion: """
            Commands: REGISTER <user>, UNREGISTER <user>, CONNECT <user>, DISCONNECT <user>, \
            PUBLISH <file> <description>, DELETE <file>, LIST_USERS, LIST_CONTENT <user>, \
            GET_FILE <user> <remote file> <local file>, QUIT. Reads commands from stdin; \
            without a terminal it runs them in order and exits at end of input.
            """)

    @Option(name: .shortAndLong, help: "Directory server, by name or IP.")
    var server: String

    @Option(name: .shortAndLong, help: "Directory server port (1024-65535).")
    var port: Int

    @Option(help: "Time service URL.")
    var timeService = "http://localhost:8000"

    @Option(help: "How to ask the time service: soap (get_time) or plain (GET /time).")
    var timeMethod: TimeServiceClient.Method = .soap

    @Option(help: "Folder whose files peers may download (default: the current folder).")
    var shareDir: String?

    @Flag(help: "Log each file served to peers on stderr.")
    var verbose = false

    func validate() throws {
        guard (1024...65535).contains(port) else { throw ValidationError("--port must be 1024-65535") }
        do {
            _ = try TimeServiceClient(url: timeService)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func run() async throws {
        // Writing to a peer that went away must fail the write, not kill the client.
        signal(SIGPIPE, SIG_IGN)
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
        let output = ClientOutput(
            line: { writeOut($0 + "\n") },
            diagnostic: { writeErr("p2p-client: \($0)\n") },
            progress: stderrIsTerminal ? showProgress : nil)
        let session = ClientSession(
            directory: DirectoryClient(host: server, port: port),
            timeService: try TimeServiceClient(url: timeService, method: timeMethod),
            folder: folder,
            output: output,
            logger: Logger(label: "p2p-client"))

        // Ctrl+C or SIGTERM: disconnect first, like QUIT.
        let signals = [Int32(SIGINT), Int32(SIGTERM)].map { (number: Int32) -> any DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                Task {
                    await session.shutdown()
                    writeOut(interactive ? "\n" : "")
                    Glibc.exit(0)
                }
            }
            source.resume()
            return source
        }
        defer { for source in signals { source.cancel() } }

        let reader = LineReader()
        while let line = await reader.next(prompt: interactive ? ClientSession.prompt : nil) {
            guard await session.execute(line: line) else { return }
        }
        // End of input acts like QUIT.
        await session.shutdown()
        if interactive { writeOut("\n") }
    }
}

/// Reads stdin one line at a time on its own thread (a blocking read must not hold a
/// concurrency thread), printing the prompt just before each read.
final class LineReader: Sendable {
    func next(prompt: String?) async -> String? {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                if let prompt { writeOut(prompt) }
                continuation.resume(returning: readLine(strippingNewline: true))
            }
        }
    }
}

private func writeOut(_ text: String) {
    FileHandle.standardOutput.write(Data(text.utf8))
}

private func writeErr(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}
