import ArgumentParser
import Foundation
import Logging
import P2PDirectory
import P2PDirectoryPostgres
import P2PDirectoryStores
import P2PDirectorySQLite

/// `p2p-server copy-directory`: moves a directory kept in SQLite into PostgreSQL, for going
/// from one server to several.
struct CopyDirectoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy-directory",
        abstract: "Copy a SQLite directory (users, addresses, files) into a PostgreSQL one.",
        discussion: """
            Stop the server that uses the SQLite directory first. The copy is one transaction: \
            the target gets all of it or nothing. A target that already holds users is left \
            alone unless --replace is given.
            """)

    @Option(help: "The SQLite directory: a data folder holding directory.sqlite, or the database file.")
    var from: String

    @Option(help: "The PostgreSQL directory: postgres://USER:PASSWORD@HOST:PORT/DB (default: $P2P_STORE).")
    var to: String?

    @Flag(help: "Delete what the target directory holds before copying.")
    var replace = false

    func run() async throws {
        let logger = Logger(label: "p2p-server.copy")
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: from, isDirectory: &isFolder) else {
            throw ValidationError("--from: \(from) does not exist")
        }
        let sourcePath =
            isFolder.boolValue ? (from as NSString).appendingPathComponent(SQLiteDirectoryStore.fileName) : from
        guard FileManager.default.fileExists(atPath: sourcePath) else {
            throw ValidationError("--from: no \(SQLiteDirectoryStore.fileName) in \(from)")
        }
        guard let target = to ?? ProcessInfo.processInfo.environment["P2P_STORE"], !target.isEmpty else {
            throw ValidationError("--to: name the PostgreSQL directory (or set $P2P_STORE)")
        }
        let url: PostgresStoreURL
        do {
            guard case .postgres(let parsed) = try DirectoryStoreLocation(parsing: target) else {
                throw ValidationError("--to: the target must be a postgres:// URL")
            }
            url = parsed
        } catch let error as DirectoryStoreLocationError {
            throw ValidationError("--to: \(error)")
        }

        // Opened first: a source still in use by its server is refused before the target is
        // touched.
        let source: SQLiteDirectoryStore
        do {
            source = try SQLiteDirectoryStore(path: sourcePath, logger: logger)
        } catch {
            throw failure("cannot open \(sourcePath): \(error)")
        }
        let destination: PostgresDirectoryStore
        do {
            destination = try await PostgresDirectoryStore.open(url, logger: logger)
        } catch {
            try? await source.close()
            throw failure("cannot open \(url): \(error)")
        }
        // Page by page from the one into the other, in one transaction of the target: memory
        // stays flat however large the directory.
        let copied: (users: Int, connected: Int, files: Int)
        do {
            copied = try await destination.load(from: source, replacing: replace)
            try await destination.close()
            try await source.close()
        } catch {
            try? await destination.close()
            try? await source.close()
            throw failure("\(error)")
        }
        print(
            "copied \(copied.users) users (\(copied.connected) connected) and \(copied.files) files "
                + "from \(sourcePath) to \(url)")
    }

    private func failure(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data("p2p-server copy-directory: \(message)\n".utf8))
        return ExitCode(1)
    }
}
