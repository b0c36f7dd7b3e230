import P2PDirectory
import P2PDirectoryStores
import Testing

@testable import P2PDirectoryPostgres
@testable import P2PDirectorySQLite

/// `--store` values: what each names, and the ones refused.
@Suite struct StoreLocationTests {
    @Test func sqlitePaths() throws {
        #expect(try DirectoryStoreLocation(parsing: "sqlite:/tmp/d.sqlite") == .sqlite(path: "/tmp/d.sqlite"))
        #expect(try DirectoryStoreLocation(parsing: "sqlite:///tmp/d.sqlite") == .sqlite(path: "/tmp/d.sqlite"))
        #expect(try DirectoryStoreLocation(parsing: "data/d.sqlite") == .sqlite(path: "data/d.sqlite"))
    }

    @Test func postgresURLs() throws {
        let url = try PostgresStoreURL(parsing: "postgres://p2p:s%40cret%3Ax@db.example:6543/directory")
        #expect(
            url
                == PostgresStoreURL(
                    host: "db.example", port: 6543, user: "p2p", password: "s@cret:x", database: "directory"))
        // Shown without the password; given back whole for starting servers on it.
        #expect(url.description == "postgres://p2p:***@db.example:6543/directory")
        #expect(try PostgresStoreURL(parsing: url.connectionString) == url)

        let plain = try DirectoryStoreLocation(parsing: "postgresql://me@127.0.0.1/d?sslmode=disable")
        #expect(plain == .postgres(PostgresStoreURL(host: "127.0.0.1", user: "me", database: "d", tlsMode: .disable)))
        #expect(plain.description == "postgres://me@127.0.0.1:5432/d?sslmode=disable")
        #expect(try PostgresStoreURL(parsing: "postgres://me@[::1]:5433/d").host == "::1")
    }

    @Test(arguments: [
        ("postgres://127.0.0.1/d", "no user name"),
        ("postgres://me@/d", "no host"),
        ("postgres://me@h:5432", "no database name"),
        ("postgres://me@h:5432/", "no database name"),
        ("postgres://me:pw@h/d?sslmode=maybe", "sslmode must be"),
        ("postgres://me@h/d?timeout=3", "unknown parameter"),
    ])
    func badPostgresURLs(_ text: String, _ reason: String) {
        #expect {
            try DirectoryStoreLocation(parsing: text)
        } throws: { error in
            "\(error)".contains(reason) && !"\(error)".contains("pw")
        }
    }

    @Test func otherSchemesAreRefusedWithTheSupportedOnes() {
        #expect {
            try DirectoryStoreLocation(parsing: "mysql://me@h/d")
        } throws: { error in
            "\(error)".contains("'mysql://'") && "\(error)".contains("postgres://")
        }
    }
}
