import Foundation
import Logging
import P2PProtocol
import P2PTestSupport
import Testing

@testable import P2PDirectory
@testable import P2PDirectoryPostgres
@testable import P2PDirectorySQLite
import P2PDirectoryStores

@Suite struct PostgresStoreTests {
    /// Two servers registering the same new names in opposite orders: one waits for the other,
    /// never both for each other. (PostgreSQL's deadlock detection is set off for the database,
    /// so a cycle would hold both batches until the store's deadline and fail them.)
    @Test func registersOfTheSameNamesInOppositeOrdersDoNotDeadlock() async throws {
        let server = try await PostgresServer.shared()
        let url = try await server.newDatabase()
        try await server.psql("ALTER DATABASE \(url.database) SET deadlock_timeout = '1h'")
        let one = try await DirectoryStoreLocation.postgres(url).open(logger: Logger(label: "test"))
        let two = try await DirectoryStoreLocation.postgres(url).open(logger: Logger(label: "test"))
        for round in 0..<10 {
            let names = (0..<300).map { "r\(round)-\($0)" }
            async let first = one.apply(names.map { .register(user: $0) })
            async let second = two.apply(names.reversed().map { .register(user: $0) })
            let (codes, reversedCodes) = await (first, second)
            let pairs = zip(codes, reversedCodes.reversed())
            #expect(
                pairs.allSatisfy { ($0 == .ok && $1 == 1) || ($0 == 1 && $1 == .ok) },
                "round \(round): \(codes) \(reversedCodes)")
        }
        #expect(try await one.registeredUsers().count == 3000)
        try await one.close()
        try await two.close()
    }
}
