import Foundation

/// A small internet inside one machine, built with network namespaces, veth pairs and nftables
/// (issue 30): a core router, hosts with public addresses on it, and home networks, each a
/// router doing NAT (nftables masquerade; `fully-random` for a symmetric NAT that maps every
/// connection to a new port) with one host behind it. Like a home router, a NAT router drops
/// every connection from outside that is not an answer to one from inside.
///
/// Public addresses are in 198.18.0.0/15 (set aside for benchmarks, RFC 2544), each attachment
/// its own /24 (`198.18.N.2`, the core `198.18.N.1`); home networks are `192.168.N.0/24`. Nothing
/// is routed to or from the machine's own namespace: programs run inside with `ip netns exec`.
/// ``remove()`` deletes every namespace (and with them every interface and rule).
///
/// Needs root and a kernel that allows `ip netns add`; ``isAvailable`` says whether this
/// machine can.
public final class SimulatedInternet: @unchecked Sendable {
    public struct Host: Sendable {
        /// The namespace the host's programs run in.
        public let namespace: String
        /// Its own address: public, or private behind its router.
        public let address: String
        /// The namespace of its NAT router (nil for a public host).
        public let router: String?
        /// The interface whose counters say what went in and out of the host.
        public let interface: String
    }

    private let prefix: String
    private let core: String
    private var namespaces: [String] = []
    private var attachments = 0

    /// Whether namespaces can be made here (root, `ip` and `nft` present, the kernel allows it).
    public static let isAvailable: Bool = {
        guard getuid() == 0, let ip = ipTool, FileManager.default.isExecutableFile(atPath: nftTool ?? "") else {
            return false
        }
        let name = "p2p-probe-\(getpid())"
        guard run(ip, ["netns", "add", name]) == 0 else { return false }
        _ = run(ip, ["netns", "del", name])
        return true
    }()

    static let ipTool = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    static let nftTool = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    public init() throws {
        prefix = "p2p\(getpid() % 100_000)x\(UInt16.random(in: 0...UInt16.max))"
        core = prefix + "-core"
        try addNamespace(core)
        try ip(core, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    }

    deinit { remove() }

    /// A host with a public address.
    public func addPublicHost(_ name: String) throws -> Host {
        let namespace = prefix + "-" + name
        try addNamespace(namespace)
        let (address, interface) = try attach(namespace)
        return Host(namespace: namespace, address: address, router: nil, interface: interface)
    }

    /// A host behind its own NAT router: `symmetric` maps every connection to a new random port.
    public func addHomeHost(_ name: String, symmetric: Bool = false) throws -> Host {
        let router = prefix + "-" + name + "-r"
        let namespace = prefix + "-" + name
        try addNamespace(router)
        try addNamespace(namespace)
        _ = try attach(router)
        let lan = attachments
        attachments += 1
        try ipTool(["link", "add", "lan", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", namespace])
        try ip(router, "ip", "addr", "add", "192.168.\(lan).1/24", "dev", "lan")
        try ip(router, "ip", "link", "set", "lan", "up")
        try ip(namespace, "ip", "addr", "add", "192.168.\(lan).2/24", "dev", "eth0")
        try ip(namespace, "ip", "link", "set", "eth0", "up")
        try ip(namespace, "ip", "route", "add", "default", "via", "192.168.\(lan).1")
        try ip(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        // The same router as scripts/nat-demo.sh builds by hand (its outside interface is "wan").
        let rules = capture(
            "/bin/bash", [packageRoot + "/scripts/nat-demo.sh", "rules"] + (symmetric ? ["symmetric"] : []))
        guard rules.contains("masquerade") else { throw SetupError("scripts/nat-demo.sh rules printed no rules") }
        let file = NSTemporaryDirectory() + "/\(router).nft"
        try rules.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        try ip(router, Self.nftTool!, "-f", file)
        return Host(namespace: namespace, address: "192.168.\(lan).2", router: router, interface: "eth0")
    }

    /// The command line that runs `executable` inside `host`'s namespace.
    public static func command(in host: Host?, _ executable: String, _ arguments: [String]) -> (String, [String]) {
        guard let host, let ip = ipTool else { return (executable, arguments) }
        return (ip, ["netns", "exec", host.namespace, executable] + arguments)
    }

    /// Bytes received plus bytes sent on `host`'s interface so far.
    public func bytes(through host: Host) -> Int {
        func read(_ counter: String) -> Int {
            let output = capture(
                Self.ipTool!,
                ["netns", "exec", host.namespace, "cat", "/sys/class/net/\(host.interface)/statistics/\(counter)"])
            return Int(output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        return read("rx_bytes") + read("tx_bytes")
    }

    /// Deletes every namespace made (and so every interface, route and rule in them).
    public func remove() {
        guard let ip = Self.ipTool else { return }
        for namespace in namespaces.reversed() { _ = Self.run(ip, ["netns", "del", namespace]) }
        namespaces.removeAll()
    }

    // MARK: Building

    /// Connects `namespace` to the core with a /24 of its own; its address and interface.
    private func attach(_ namespace: String) throws -> (String, String) {
        let net = attachments
        attachments += 1
        let outside = "c\(net)"
        try ipTool(["link", "add", outside, "netns", core, "type", "veth", "peer", "name", "wan", "netns", namespace])
        try ip(core, "ip", "addr", "add", "198.18.\(net).1/24", "dev", outside)
        try ip(core, "ip", "link", "set", outside, "up")
        try ip(namespace, "ip", "addr", "add", "198.18.\(net).2/24", "dev", "wan")
        try ip(namespace, "ip", "link", "set", "wan", "up")
        try ip(namespace, "ip", "route", "add", "default", "via", "198.18.\(net).1")
        return ("198.18.\(net).2", "wan")
    }

    private func addNamespace(_ name: String) throws {
        try ipTool(["netns", "add", name])
        namespaces.append(name)
        try ip(name, "ip", "link", "set", "lo", "up")
    }

    private func ip(_ namespace: String, _ command: String, _ arguments: String...) throws {
        let executable = command == "ip" ? Self.ipTool! : command == "sysctl" ? "/usr/sbin/sysctl" : command
        try ipTool(["netns", "exec", namespace, executable] + arguments)
    }

    private func ipTool(_ arguments: [String]) throws {
        guard let ip = Self.ipTool else { throw SetupError("no ip command") }
        let status = Self.run(ip, arguments)
        guard status == 0 else { throw SetupError("ip \(arguments.joined(separator: " ")) exited with \(status)") }
    }

    private static func run(_ executable: String, _ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            return -1
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    private func capture(_ executable: String, _ arguments: [String]) -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return "" }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
