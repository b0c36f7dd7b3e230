import ArgumentParser
import Foundation
import P2PConformance

/// `p2p-conformance`: checks an implementation of the protocol from outside, over the network.
@main
struct ConformanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2p-conformance",
        abstract: "Check a directory server, a peer, a time service or a log server against docs/PROTOCOL.md.",
        discussion: "Checks (--only and --skip take a check's name, the part after the group, or a group):\n\n"
            + Conformance.catalogue.map { "  \($0.id)\($0.quick ? " [quick]" : ""): \($0.proves)" }.joined(
                separator: "\n")
            + "\n\nExit status: 0 when no check failed, 1 when one did, 64 for a command-line error.",
        subcommands: [ServerCommand.self, PeerCommand.self, TimeCommand.self, LogCommand.self])
}

/// Options every command shares.
struct CommonOptions: ParsableArguments {
    @Option(help: "Run only these checks (repeatable; a name, the part after the group, or a group).")
    var only: [String] = []

    @Option(help: "Leave these checks out (repeatable).")
    var skip: [String] = []

    @Flag(help: "Only the quick set: one check per operation's main rule.")
    var quick = false

    @Flag(help: "Print the results as JSON (for graders and CI) instead of lines.")
    var json = false

    @Flag(name: .shortAndLong, help: "Show every exchange of a failed check, not just the last two.")
    var verbose = false

    /// Runs `checks` as selected, prints the results, and exits 1 when one failed.
    func run(_ checks: [Check], target: String, stillAnswers: (@Sendable () async -> Bool)? = nil) async throws {
        let selection = Selection(only: only, skip: skip, quick: quick)
        let unknown = selection.unknownPatterns(among: checks)
        guard unknown.isEmpty else {
            throw ValidationError("no check is named \(unknown.joined(separator: ", ")) (see --help)")
        }
        if !json { FileHandle.standardOutput.write(Data("p2p-conformance: \(target)\n".utf8)) }
        let verbose = verbose
        let json = json
        let results = await Conformance.run(checks, selection: selection, stillAnswers: stillAnswers) { result in
            if !json {
                // Each line as its check ends (stdout may be a pipe, which print buffers).
                FileHandle.standardOutput.write(Data((Report.line(result, verbose: verbose) + "\n").utf8))
            }
        }
        FileHandle.standardOutput.write(
            Data(((json ? Report.json(results, target: target) : Report.summary(results)) + "\n").utf8))
        if results.contains(where: \.outcome.isFailure) { throw ExitCode(1) }
    }
}

func endpoint(_ text: String) throws -> Endpoint {
    guard let endpoint = Endpoint(parsing: text) else { throw ValidationError("\(text): expected HOST:PORT") }
    return endpoint
}

struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Check a directory server: every operation's codes, the lists, bad input, concurrency.",
        discussion: "Uses fresh random user names and removes what it made, so it can run against a server in use.")

    @Argument(help: "The directory server, HOST:PORT.")
    var address: String

    @OptionGroup var options: CommonOptions

    func run() async throws {
        let target = try endpoint(address)
        try await options.run(
            Conformance.serverChecks(target), target: "directory server \(target)",
            stillAnswers: { await Conformance.serverAnswers(target) })
    }
}

struct PeerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer",
        abstract:
            """
            Check a peer's GET_FILE: a file it serves, one it does not, paths that climb out, slow and parallel \
            requests.
            """
    )

    @Argument(help: "The peer's listening address, HOST:PORT (LIST_USERS gives it).")
    var address: String

    @Argument(help: "A file the peer serves (published by its user).")
    var file: String

    @Option(help: "The file's SHA-256 (hex), to check the bytes served.")
    var sha256: String?

    @Option(help: "A local copy of the file, to check the bytes served.")
    var localCopy: String?

    @OptionGroup var options: CommonOptions

    func run() async throws {
        let target = try endpoint(address)
        var expected: ExpectedFile?
        if let localCopy {
            guard let data = FileManager.default.contents(atPath: localCopy) else {
                throw ValidationError("--local-copy \(localCopy): cannot read it")
            }
            expected = .content(Array(data))
        } else if let sha256 {
            guard sha256.count == 64, sha256.allSatisfy(\.isHexDigit) else {
                throw ValidationError("--sha256: 64 hexadecimal digits expected")
            }
            expected = .sha256(sha256)
        }
        try await options.run(
            Conformance.peerChecks(target, file: file, expected: expected), target: "peer \(target), file \(file)")
    }
}

struct TimeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "time", abstract: "Check a time service: its WSDL, get_time through SOAP, the date-time format.")

    @Argument(help: "The time service's URL, http://HOST:PORT.")
    var url: String

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await options.run(Conformance.timeChecks(url), target: "time service \(url)")
    }
}

struct LogCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "oplog",
        abstract:
            "Check an operation-log server through rpcbind: registered, and printing the records of rpc/operations.x.",
        discussion: """
            Each check that sends records makes the log server print a line for the user \
            p2p-conformance. A log server built from another .x file fails where its program, \
            versions or records differ from ours.
            """)

    @Argument(help: "The host running rpcbind and the log server.")
    var host: String

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await options.run(Conformance.logChecks(host), target: "operation log on \(host)")
    }
}
