// swift-tools-version:6.1
// Coverage-guided fuzz targets for the decoders that read bytes from strangers. Built apart
// from the main package, every module instrumented (`make fuzz` passes
// `-sanitize=fuzzer,address -parse-as-library`); P2PProtocol is the main package's own
// sources (Sources/P2PProtocol is a link to them), so only swift-nio is resolved here.
import PackageDescription

let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")

let package = Package(
    name: "p2p-fuzz",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3")
    ],
    targets: [
        .target(name: "P2PProtocol", dependencies: [nioCore]),
        // Hands a target to libFuzzer from the executable's own main.
        .target(name: "FuzzDriver", dependencies: ["P2PProtocol"]),
        // A directory request (what the server reads from any client).
        .executableTarget(name: "fuzz-request", dependencies: ["P2PProtocol", "FuzzDriver", nioCore]),
        // A PROXY protocol header, v1 or v2 (what the server reads behind a balancer).
        .executableTarget(name: "fuzz-proxy-header", dependencies: ["P2PProtocol", "FuzzDriver", nioCore]),
        // The replies the client reads: the directory's, a peer's file and its file information.
        .executableTarget(name: "fuzz-reply", dependencies: ["P2PProtocol", "FuzzDriver", nioCore]),
        // A GET_FILE request to a client's file server, with our reserved names (info, range,
        // reversed) inside.
        .executableTarget(name: "fuzz-peer-request", dependencies: ["P2PProtocol", "FuzzDriver", nioCore]),
    ]
)
