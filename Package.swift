// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "p2p-filesharing",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "p2p-server", targets: ["p2p-server"]),
        .executable(name: "p2p-client", targets: ["p2p-client"]),
        .executable(name: "p2p-time", targets: ["p2p-time"]),
        .executable(name: "p2p-conformance", targets: ["p2p-conformance"]),
        .library(name: "P2PProtocol", targets: ["P2PProtocol"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        // Already built for postgres-nio; SHA-256 of shared files (the client's peer extension).
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        // TLS between our peers (BoringSSL, already built for postgres-nio) and the
        // certificates made from each client's identity key.
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
    ],
    targets: [
        // The wire protocol: message types, decoders, encoders and limits. No I/O.
        .target(
            name: "P2PProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // libtirpc, found through pkg-config (its headers live in /usr/include/tirpc).
        .systemLibrary(
            name: "CTIRPC",
            pkgConfig: "libtirpc",
            providers: [.apt(["libtirpc-dev"])]
        ),
        // Line editing for the client's prompt (Debian's libedit).
        .systemLibrary(
            name: "CLibEdit",
            pkgConfig: "libedit",
            providers: [.apt(["libedit-dev"])]
        ),
        // rpcgen's client stubs and XDR routines for rpc/operations.x, plus a small shim.
        .target(
            name: "COperationLog",
            dependencies: ["CTIRPC"]
        ),
        // Operation records, the sink the directory server submits them to, and the worker
        // thread that the log sender and the console writer share. No RPC, no libtirpc.
        .target(name: "P2POperationLog", dependencies: ["P2PNetworkSupport"]),
        // Delivery of operation records to the log server over ONC-RPC.
        .target(
            name: "P2PRPCOperationLog",
            dependencies: [
                "COperationLog",
                "P2POperationLog",
                "P2PNetworkSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Keys: the client's identity (Ed25519), its fingerprint, and the keyed sessions'
        // signatures, key agreement and MACs (both sides).
        .target(
            name: "P2PIdentity",
            dependencies: ["P2PProtocol", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // The directory: persistent store, request handling and the NIO server.
        .target(
            name: "P2PDirectory",
            dependencies: [
                "P2PProtocol",
                "P2POperationLog",
                "P2PNetworkSupport",
                "P2PIdentity",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The SQLite store (GRDB): the embedded default, with its write-ahead-log checkpointer
        // and search bitmaps.
        .target(
            name: "P2PDirectorySQLite",
            dependencies: [
                "P2PDirectory",
                "P2PProtocol",
                "P2POperationLog",
                "P2PNetworkSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The PostgreSQL store (postgres-nio), which several servers can share.
        .target(
            name: "P2PDirectoryPostgres",
            dependencies: [
                "P2PDirectory",
                "P2PProtocol",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The list of stores: `--store` parsed and opened (one case per store module).
        .target(
            name: "P2PDirectoryStores",
            dependencies: [
                "P2PDirectory", "P2PDirectorySQLite", "P2PDirectoryPostgres", "P2PNetworkSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The directory server's read-only web side: the page, /metrics (Prometheus), /health.
        .target(
            name: "P2PDirectoryWeb",
            dependencies: [
                "P2PDirectory",
                "P2PProtocol",
                "P2PNetworkSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Small helpers: timeouts, readable connection errors, IPv6 and dual-stack listening, and
        // the two ways blocking work runs (BlockingWork, WorkerThread).
        .target(
            name: "P2PNetworkSupport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The time service's SOAP contract: the operation, its WSDL, envelopes and faults.
        .target(name: "P2PTimeSOAP"),
        // The time web service (SOAP + plain HTTP) on Hummingbird.
        .target(
            name: "P2PTimeServer",
            dependencies: [
                "P2PProtocol",
                "P2PNetworkSupport",
                "P2PTimeSOAP",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // A small HTTP client for the time service, used by the client CLI.
        .target(
            name: "P2PTimeClient",
            dependencies: [
                "P2PNetworkSupport",
                "P2PProtocol",
                "P2PTimeSOAP",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The client: directory requests, the peer file server, downloads and the shell.
        .target(
            name: "P2PClient",
            dependencies: [
                "P2PIdentity",
                "P2PNetworkSupport",
                "P2PProtocol",
                "P2PTimeClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        // The client's web face (p2p-client --web): the page and the JSON API, on Hummingbird,
        // driving the same session as the shell.
        .target(
            name: "P2PClientWeb",
            dependencies: [
                "P2PClient",
                "P2PNetworkSupport",
                "P2PProtocol",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Checks of any implementation of the protocol, from outside (p2p-conformance).
        .target(
            name: "P2PConformance",
            dependencies: [
                "P2PProtocol",
                "P2PNetworkSupport",
                "P2PTimeClient",
                "P2PTimeSOAP",
                "COperationLog",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .executableTarget(
            name: "p2p-conformance",
            dependencies: [
                "P2PConformance",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "p2p-server",
            dependencies: [
                "P2PDirectory",
                "P2PIdentity",
                "P2PDirectoryStores",
                "P2PDirectorySQLite",
                "P2PDirectoryPostgres",
                "P2PDirectoryWeb",
                "P2PNetworkSupport",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
                "P2POperationLog",
                "P2PRPCOperationLog",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "p2p-client",
            dependencies: [
                "P2PClient",
                "P2PClientWeb",
                "P2PIdentity",
                "P2PNetworkSupport",
                "CLibEdit",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "p2p-time",
            dependencies: [
                "P2PTimeServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        // The NIO floor of `make bench`: the least a SwiftNIO server of the protocol's shape does.
        .executableTarget(
            name: "nio-floor",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "bench/nio-floor"
        ),
        // The path floor of `make bench`: the server's request path over the in-memory store.
        .executableTarget(
            name: "path-floor",
            dependencies: [
                "P2PDirectory",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "bench/path-floor"
        ),
        // Helpers shared by the test targets: temporary folders, a server harness, raw sockets.
        .target(
            name: "P2PTestSupport",
            dependencies: [
                "P2PDirectory",
                "P2PDirectoryStores",
                "P2PDirectoryPostgres",
                "P2PProtocol",
                "P2POperationLog",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/P2PTestSupport"
        ),
        .testTarget(name: "P2PProtocolTests", dependencies: ["P2PProtocol"]),
        .testTarget(
            name: "P2PDirectoryTests",
            dependencies: [
                "P2PDirectory",
                "P2PIdentity",
                .product(name: "Crypto", package: "swift-crypto"),
                "P2PDirectorySQLite",
                "P2PDirectoryPostgres",
                "P2PDirectoryStores",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                "P2PDirectoryWeb",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                "P2PProtocol",
                "P2POperationLog",
                "P2PTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "P2POperationLogTests",
            dependencies: [
                "P2POperationLog", "P2PRPCOperationLog", "P2PDirectory", "P2PDirectoryStores", "P2PDirectorySQLite", "P2PProtocol",
                "P2PTestSupport",
                "COperationLog",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "P2PTimeTests",
            dependencies: [
                "P2PTimeServer",
                "P2PTimeSOAP",
                "P2PTestSupport",
                "P2PTimeClient",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]
        ),
        .testTarget(
            name: "P2PClientTests",
            dependencies: [
                "P2PClient", "P2PClientWeb", "P2PDirectory", "P2PProtocol", "P2PTestSupport", "P2PTimeSOAP",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
