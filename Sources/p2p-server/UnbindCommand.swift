import ArgumentParser
import Foundation
import Logging
import P2PDirectory
import P2PDirectoryStores
import P2PIdentity

/// `p2p-server unbind USER`: frees a user name from the key it is bound to, for its owner who
/// lost the key (docs/OPERATIONS.md, "Keys"). Nothing else of the user changes; its next keyed
/// CONNECT binds the key it comes with.
struct UnbindCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unbind",
        abstract: "Unbind a user name from its key (its owner lost the key).",
        discussion: """
            Make sure first that the person asking owns the name: whoever CONNECTs it next with \
            our client binds it to their own key. A SQLite directory is used by one process at a \
            time: stop its server first. A PostgreSQL one can be changed while servers run.
            """)

    @Argument(help: "The user name to unbind.")
    var user: String

    @Option(help: "Folder holding directory.sqlite, when --store is not given.")
    var dataDir: String = "./storage"

    @Option(
        help: "The directory: sqlite:PATH, PATH or postgres://USER:PASSWORD@HOST:PORT/DB (default: $P2P_STORE if set).")
    var store: String?

    func run() async throws {
        let logger = Logger(label: "p2p-server.unbind")
        let location: DirectoryStoreLocation
        do {
            if let text = store ?? ProcessInfo.processInfo.environment["P2P_STORE"].flatMap({ $0.isEmpty ? nil : $0 }) {
                location = try DirectoryStoreLocation(parsing: text)
            } else {
                location = .sqlite(dataDirectory: dataDir)
            }
        } catch {
            throw ValidationError("--store: \(error)")
        }
        let opened: any DirectoryStore
        do {
            opened = try await location.open(logger: logger)
        } catch {
            throw failure("cannot open \(location): \(error)")
        }
        let outcome: Result<(found: Bool, key: String?), any Error>
        do {
            let key = try await opened.boundKey(of: user)
            outcome = .success((try await opened.unbind(user), key))
        } catch {
            outcome = .failure(error)
        }
        try? await opened.close()
        switch outcome {
        case .failure(let error):
            throw failure("\(error)")
        case .success((false, _)):
            throw failure("no user \(user) in \(location)")
        case .success((true, nil)):
            print("\(user) was not bound to a key; nothing changed")
        case .success((true, let key?)):
            let fingerprint = IdentityKey.fingerprint(ofPublicKeyText: key) ?? key
            print("\(user) is no longer bound to the key \(fingerprint); its next keyed CONNECT binds a new one")
        }
    }

    private func failure(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data("p2p-server unbind: \(message)\n".utf8))
        return ExitCode(1)
    }
}
