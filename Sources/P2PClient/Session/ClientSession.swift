import Foundation
import Logging
import NIOCore
import P2PIdentity
import P2PNetworkSupport
import P2PProtocol
import P2PTimeClient
import Synchronization

/// The state of one client and what each console command does (PROTOCOL.md section 5):
/// which user is connected here, the peer file server while one is, and the requests.
public actor ClientSession {
    public static let prompt = "c> "

    private let directory: DirectoryClient
    private let timeService: TimeServiceClient?
    private let folder: SharedFolder
    private let uploadLimits: UploadLimits
    /// Where the file server for peers listens (nil: every IPv6 and IPv4 address).
    private let peerHost: String?
    /// Plain GET_FILE to every peer: no size, digest, ranges or resume (`--plain-get-file`).
    private let plainGetFile: Bool
    private let workingDirectory: String
    /// Where the record of published files is kept (``PublishedRecord``); nil: in memory only,
    /// for this run.
    private let stateDirectory: String?
    /// Without a state folder: the records of this run, per user.
    private var memoryRecords: [String: PublishedRecord] = [:]
    /// The largest file a download accepts from an owner that announces its size (nil: what
    /// fits on the disk).
    private let maxDownloadSize: Int64?
    /// Where this client's key is kept (for IDENTITY).
    private let identityFile: String?
    private let output: ClientOutput
    private let logger: Logger

    /// Whether a user is online through this client (at most one), and what serves her.
    private var state = SessionState.offline
    /// The last user registered or connected here: who PUBLISH, DELETE and the lists act for
    /// while nobody is connected, so the server's answer decides the line.
    private var lastKnownUser: String?
    /// TLS with other peers of ours, proving this client's key (a throwaway one without an
    /// identity: downloads still check the owner's); nil if it could not be set up.
    private let peerTLS: PeerTLS?
    /// Owners no connection could be punched to, when and why: for ten minutes after, GET_FILE
    /// from them goes straight to the relay instead of trying again for seconds.
    private var punchFailures: [String: (at: ContinuousClock.Instant, reason: String)] = [:]

    private func notePunchFailure(_ owner: String, _ reason: String) {
        punchFailures[owner] = (.now, reason)
    }
    /// Whether to open one (`--no-control-connection` turns it off: the server then checks
    /// this client's port like any third-party client's).
    private let controlConnection: Bool
    /// The folders shared whole (SHARE), kept in line with the directory while connected.
    private let sharing: FolderSharing
    private var timeServiceFailing = false
    /// The downloads and uploads of this run.
    public nonisolated let transfers: TransferList
    /// Saved searches run again every this often (``runWishlist()``) and at CONNECT.
    public nonisolated let wishlistInterval: Duration
    private var wishlist: Wishlist
    /// Where the wishlist is kept (nil: in memory, for this run).
    private var wishlistPath: String? { stateDirectory.map { $0 + "/wishlist.json" } }
    /// How many commands failed (a result line other than OK, or a line that is no command):
    /// a scripted run exits 1 when any did.
    public private(set) var failures = 0

    public init(
        directory: DirectoryClient,
        timeService: TimeServiceClient?,
        folder: SharedFolder,
        uploadLimits: UploadLimits = UploadLimits(),
        peerHost: String? = nil,
        plainGetFile: Bool = false,
        controlConnection: Bool = true,
        workingDirectory: String = FileManager.default.currentDirectoryPath,
        stateDirectory: String? = nil,
        maxDownloadSize: Int64? = nil,
        identityFile: String? = nil,
        transfers: TransferList = TransferList(),
        wishlistInterval: Duration = .seconds(300),
        output: ClientOutput,
        logger: Logger
    ) {
        self.transfers = transfers
        self.wishlistInterval = wishlistInterval
        wishlist = stateDirectory.map { Wishlist.load(from: $0 + "/wishlist.json") } ?? Wishlist()
        self.identityFile = identityFile
        self.stateDirectory = stateDirectory
        self.maxDownloadSize = maxDownloadSize
        self.directory = directory
        self.timeService = timeService
        self.folder = folder
        self.uploadLimits = uploadLimits
        self.peerHost = peerHost
        self.plainGetFile = plainGetFile
        self.controlConnection = controlConnection
        self.workingDirectory = workingDirectory
        self.output = output
        self.logger = logger
        sharing = FolderSharing(served: folder, output: output)
        do {
            peerTLS = try PeerTLS(identity: directory.identity ?? IdentityKey())
        } catch {
            output.diagnostic("\(error): downloads from users bound to a key will fail")
            peerTLS = nil
        }
    }

    /// Shares `path` from the next CONNECT on (the client's `--share` option): nothing printed
    /// on stdout.
    public func shareAtConnect(_ path: String) async throws(FolderSharing.ShareError) {
        _ = try await sharing.share(absolute(path))
    }

    /// The user connected through this client.
    public var connectedUser: String? { state.online?.user }

    /// The port peers download from while a user is connected.
    public var peerPort: Int? { state.online?.peerServer.port }

    /// Parses and runs one typed line. Returns false when the shell should end (QUIT).
    public func execute(line: String) async -> Bool {
        let command: ConsoleCommand
        do {
            command = try ConsoleCommand.parse(line)
        } catch .empty {
            return true
        } catch {
            failures += 1
            say(error.description)
            return true
        }
        return await execute(command)
    }

    /// Runs one command. Returns false after QUIT.
    public func execute(_ command: ConsoleCommand) async -> Bool {
        switch command {
        case .register(let user):
            let code = await request(.register(user: user))?.code
            if code == 0 || code == 1 { lastKnownUser = user }
            report(.register, code)

        case .unregister(let user):
            let code = await request(.unregister(user: user))?.code
            if code == 0, user == connectedUser { await stopServing() }
            report(.unregister, code)

        case .connect(let user):
            await connect(user)

        case .disconnect(let user):
            let code = await request(.disconnect(user: user))?.code
            // Serving stops even when the server says no: the user asked to go offline.
            if user == connectedUser { await stopServing() }
            report(.disconnect, code)

        case .publish(let fileName, let description):
            var code = await request(.publish(user: actingUser, fileName: fileName, description: description))?.code
            if code == 0 || code == 3 {
                let describedByShare = await sharing.publishedByHand(fileName)
                // Already there with a description SHARE made up: the typed one replaces it.
                if code == 3, describedByShare, await request(.delete(user: actingUser, fileName: fileName))?.code == 0
                {
                    code = await request(.publish(user: actingUser, fileName: fileName, description: description))?.code
                }
            }
            // 3: already published by this user: served all the same.
            if code == 0 || code == 3 { folder.publish(fileName) }
            report(.publish, code)
            if code == 0, let opened = folder.open(fileName) {
                close(opened.descriptor)
            } else if code == 0, SharedFolder.hasHiddenPart(fileName) {
                output.diagnostic(
                    "PUBLISH: \(fileName) is hidden (a part of its name starts with a dot); "
                        + "peers asking for it get FILE NOT EXIST, as SHARE never publishes hidden files")
            } else if code == 0 {
                output.diagnostic(
                    "PUBLISH: \(fileName) is not a file in the shared folder \(folder.root); "
                        + "peers asking for it get FILE NOT EXIST until it is")
            }

        case .delete(let fileName):
            let code = await request(.delete(user: actingUser, fileName: fileName))?.code
            // 3: not published: not served either.
            if code == 0 || code == 3 {
                folder.unpublish(fileName)
                await sharing.deletedByHand(fileName)
            }
            report(.delete, code)

        case .listUsers:
            let reply = await request(.listUsers(user: actingUser))
            report(.listUsers, reply?.code)
            if case .users(let users)? = reply {
                // A third-party server may list names with control characters (ours refuses
                // them): printed escaped, they cannot forge lines or drive the terminal.
                for user in users {
                    output.line(
                        """
                        \(ControlCharacters.escaped(user.name)) \(ControlCharacters.escaped(user.ip)) \
                        \(ControlCharacters.escaped(user.port))
                        """
                    )
                }
            }

        case .listContent(let owner):
            let reply = await request(.listContent(user: actingUser, owner: owner))
            report(.listContent, reply?.code)
            if case .content(let files)? = reply {
                for file in files {
                    output.line(
                        "\(ControlCharacters.escaped(file.name)) \"\(ControlCharacters.escaped(file.description))\"")
                }
            }

        case .getFile(let user, let remoteName, let localName):
            let line = await getFile(from: user, remoteName: remoteName, localName: localName)
            if line != ResultLine.getFileOK { failures += 1 }
            say(line)

        case .search(let query):
            let reply = await request(.search(user: actingUser, query: query), extension: true)
            report(.search, reply?.code)
            if case .hits(let hits)? = reply {
                for hit in hits {
                    output.line(
                        "\(ControlCharacters.escaped(hit.owner)) \(ControlCharacters.escaped(hit.name)) "
                            + "\"\(ControlCharacters.escaped(hit.description))\"")
                }
            }

        case .share(let path):
            await share(path)

        case .unshare(let path):
            do {
                let outcome = try await sharing.unshare(absolute(path))
                if outcome.failed > 0 {
                    failures += 1
                    say("UNSHARE FAIL")
                    output.diagnostic(
                        "UNSHARE: \(outcome.failed) files are still in the directory"
                            + (outcome.problem.map { ": \($0)" } ?? ""))
                } else {
                    say("UNSHARE OK")
                    if outcome.deleted > 0 {
                        output.diagnostic("UNSHARE: \(outcome.deleted) files deleted from the directory")
                    }
                }
            } catch {
                failures += 1
                say("UNSHARE FAIL")
                output.diagnostic("UNSHARE: \(error)")
            }

        case .shared:
            say("SHARED OK")
            let lines = await sharing.summary()
            for line in lines { output.line(line) }
            if connectedUser != nil {
                output.line("\(folder.publishedCount) files served to peers from \(folder.root) and the shared folders")
            }
            if lines.isEmpty { output.diagnostic("no folder is shared: SHARE <folder> shares one") }

        case .identity:
            guard let identity = directory.identity else {
                failures += 1
                say("IDENTITY FAIL")
                output.diagnostic(
                    "this client runs without a key (--no-identity): the server knows its users by address only")
                return true
            }
            say("IDENTITY OK")
            output.line("fingerprint \(identity.fingerprint)")
            if let identityFile { output.line("key file \(identityFile)") }
            output.diagnostic(
                "on our servers every user this client registers (or connects while unbound) is bound to this key: "
                    + "only this key changes it from then on, whatever the address; keep the key file safe. "
                    + "With it lost or replaced, those users can no longer be changed until the server's operator "
                    + "unbinds them (p2p-server unbind <user>)")

        case .getFolder(let user, let folder):
            do {
                let queued = try await queueFolderDownload(from: user, folder: folder)
                output.diagnostic("GET_FOLDER: \(queued.count) files queued (TRANSFERS shows them)")
                for download in queued { await download.done.value }
                let failed = queued.compactMap { transfers.transfer($0.id) }.filter {
                    if case .done = $0.state { return false } else { return true }
                }
                if failed.isEmpty {
                    say("GET_FOLDER OK")
                } else {
                    failures += 1
                    say("GET_FOLDER FAIL")
                    output.diagnostic(
                        "GET_FOLDER: \(failed.count) of \(queued.count) files not downloaded: "
                            + failed.prefix(5).map { ControlCharacters.escaped($0.file) }.joined(separator: ", ")
                            + "; GET_FOLDER again fetches the folder again, continuing the ones cut short")
                }
            } catch {
                failures += 1
                say("GET_FOLDER FAIL")
                output.diagnostic("GET_FOLDER: \(error)")
            }

        case .wish(let query):
            guard let entry = await addWish(query) else {
                failures += 1
                say("WISH FAIL")
                output.diagnostic("WISH: the wishlist holds \(Wishlist.maxEntries) searches already (UNWISH one)")
                return true
            }
            say("WISH OK")
            output.diagnostic(
                "WISH \(entry.id): \(entry.matches.count) matches now; searched again every "
                    + "\(wishlistInterval.components.seconds) s and at CONNECT, each new one fetched once")

        case .wishes:
            say("WISHES OK")
            for entry in wishlist.entries {
                let newest = entry.matches.last.map {
                    ", newest \(ControlCharacters.escaped($0.owner)) \(ControlCharacters.escaped($0.name))"
                } ?? ""
                output.line(
                    "\(entry.id) \"\(ControlCharacters.escaped(entry.query))\" \(entry.fetch ? "fetch" : "watch"), "
                        + "\(entry.matches.count) matches, searched \(entry.runs) times\(newest)")
            }

        case .unwish(let id):
            if removeWish(id) {
                say("UNWISH OK")
            } else {
                failures += 1
                say("UNWISH FAIL")
                output.diagnostic("UNWISH: no wish \(id) (WISHES lists them)")
            }

        case .transfers:
            say("TRANSFERS OK")
            let listed = transfers.all
            for transfer in listed { output.line(Self.transferLine(transfer)) }
            if listed.isEmpty { output.diagnostic("no download or upload yet in this run") }

        case .help:
            for line in ConsoleCommand.helpLines { output.line(line) }
            if let identity = directory.identity {
                output.line("This client's key: \(identity.fingerprint) (IDENTITY).")
            }

        case .quit:
            await shutdown()
            return false
        }
        return true
    }

    /// What QUIT, end of input and Ctrl+C do: a download in progress is abandoned (its partial
    /// file removed), and the connected user is disconnected as DISCONNECT would, printing
    /// DISCONNECT's result line as the reference clients do.
    public func shutdown() async {
        if FileDownloader.discardUnfinished() > 0 {
            output.diagnostic("GET_FILE interrupted; the partial file was removed")
        }
        if FileDownloader.resumableInProgress > 0 {
            output.diagnostic("GET_FILE interrupted; what arrived is kept: GET_FILE into the same name continues it")
        }
        guard let user = connectedUser else { return }
        let code = await request(.disconnect(user: user))?.code
        await stopServing()
        report(.disconnect, code)
    }

    /// Says at start, in one line, when the directory server does not accept connections
    /// (the shell goes on: it may come up later).
    public func checkServerReachable() async {
        do {
            try await directory.probe()
        } catch {
            output.diagnostic("\(error); commands will fail until it answers")
        }
    }

    // MARK: What the web face asks

    /// Who is online here and what the directory server offers.
    public struct Snapshot: Sendable, Equatable {
        /// The user connected through this client, if any.
        public var user: String?
        /// The last user registered or connected here (who the lists act for while offline).
        public var actingUser: String?
        /// The directory server, `host:port`.
        public var server: String
        /// The port peers download from, while connected.
        public var peerPort: Int?
        /// Whether this client holds a control connection (our servers).
        public var controlConnection: Bool
        /// What the server offers beyond the spec: `punch`, `relay`, `identity`.
        public var offers: [String]
        /// This client's key's fingerprint (nil with --no-identity).
        public var fingerprint: String?
    }

    public var snapshot: Snapshot {
        let online = state.online
        let offers = online?.offers ?? SessionState.ServerOffers()
        return Snapshot(
            user: online?.user, actingUser: actingUser.isEmpty ? nil : actingUser,
            server: DualStack.hostAndPort(directory.host, directory.port), peerPort: online?.peerServer.port,
            controlConnection: online?.control != nil,
            offers: [offers.punch ? "punch" : nil, offers.relay ? "relay" : nil, offers.keys ? "identity" : nil]
                .compactMap { $0 },
            fingerprint: directory.identity?.fingerprint)
    }

    /// Why a question to the directory got no answer: its result line (`LIST_USERS FAIL, USER
    /// NOT CONNECTED`), or the reason the server could not be asked.
    public struct DirectoryRefusal: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// The users online (LIST_USERS, for the acting user).
    public func onlineUsers() async throws(DirectoryRefusal) -> [ConnectedUser] {
        let reply = await request(.listUsers(user: actingUser))
        guard case .users(let users)? = reply else { throw refusal(.listUsers, reply) }
        return users
    }

    /// The files `owner` published (LIST_CONTENT).
    public func files(of owner: String) async throws(DirectoryRefusal) -> [PublishedFile] {
        let reply = await request(.listContent(user: actingUser, owner: owner))
        guard case .content(let files)? = reply else { throw refusal(.listContent, reply) }
        return files
    }

    /// Every user's files matching `query` (SEARCH, our servers).
    public func search(_ query: String) async throws(DirectoryRefusal) -> [SearchHit] {
        let reply = await request(.search(user: actingUser, query: query), extension: true)
        guard case .hits(let hits)? = reply else { throw refusal(.search, reply) }
        return hits
    }

    private func refusal(_ operation: DirectoryOperation, _ reply: Reply?) -> DirectoryRefusal {
        guard let reply else {
            return DirectoryRefusal(description: "\(operation.rawValue): the directory server gave no answer")
        }
        var line = ResultLine.line(operation, reply.code)
        if reply.code == 1, actingUser.isEmpty {
            line += " (no user is registered or connected in this client)"
        }
        return DirectoryRefusal(description: line)
    }

    /// The shared folders (SHARED).
    public func shares() async -> [FolderSharing.ShareSummary] {
        await sharing.shareSummaries()
    }

    /// Starts downloading `remoteName` from `owner` (`alice,bob`: from both) into `localName`
    /// (relative to the client's folder) and returns at once with its transfer's id; the
    /// transfer list follows it.
    /// Downloads the page started (and folders' files) run this many at once; the rest queue.
    private let slots = DownloadSlots(limit: 4)

    /// Starts downloading `remoteName` from `owner` (`alice,bob`: from both) into `localName`
    /// (relative to the client's folder; its folders are made) and returns at once with its
    /// transfer's id, queued behind ``slots``; the transfer list follows it.
    public func startDownload(from owner: String, remoteName: String, localName: String) -> Int {
        queueDownload(from: owner, remoteName: remoteName, localName: localName).id
    }

    /// ``startDownload(from:remoteName:localName:)``, with the task that ends with it.
    private func queueDownload(from owner: String, remoteName: String, localName: String) -> (
        id: Int, done: Task<Void, Never>
    ) {
        let localPath = absoluteLocal(localName)
        let id = transfers.start(
            .download, file: remoteName, peers: owner.split(separator: ",").map(String.init), localPath: localPath,
            queued: true)
        let (slots, transfers) = (self.slots, self.transfers)
        let done = Task {
            await slots.acquire()
            transfers.run(id)
            let folder = URL(fileURLWithPath: localPath).deletingLastPathComponent().path
            do {
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                _ = await getFile(from: owner, remoteName: remoteName, localName: localName, transfer: id)
            } catch {
                transfers.end(id, .failed(reason: "cannot make the folder \(folder): \(error.localizedDescription)"))
            }
            await slots.release()
        }
        return (id, done)
    }

    /// Why a folder cannot be downloaded.
    public enum FolderDownloadError: Error, Sendable, CustomStringConvertible {
        case refused(DirectoryRefusal)
        case empty(String)
        /// A file whose name would lead out of the folder (`..`) or is not a plain path.
        case unsafeName(String)

        public var description: String {
            switch self {
            case .refused(let refusal): refusal.description
            case .empty(let folder): "no file of \(folder) is published"
            case .unsafeName(let name): "\(name) is not a plain path inside the folder; nothing was downloaded"
            }
        }
    }

    /// Starts downloading every file `owner` published under `folder` (`music/albums`, its
    /// subfolders too) into a folder of the same last name here (`albums/...`), each file
    /// verified and resumable as GET_FILE's; the transfers' ids. Names come from the owner and
    /// may be hostile: any that would not stay inside that folder refuses the whole folder.
    public func startFolderDownload(from owner: String, folder: String) async throws(FolderDownloadError) -> [Int] {
        try await queueFolderDownload(from: owner, folder: folder).map(\.id)
    }

    private func queueFolderDownload(from owner: String, folder: String) async throws(FolderDownloadError) -> [(
        id: Int, done: Task<Void, Never>
    )] {
        let trimmed = String(folder.reversed().drop { $0 == "/" }.reversed())
        let files: [PublishedFile]
        do {
            files = try await self.files(of: owner.split(separator: ",").first.map(String.init) ?? owner)
        } catch {
            throw .refused(error)
        }
        let prefix = trimmed.isEmpty ? "" : trimmed + "/"
        let chosen = files.map(\.name).filter { $0.hasPrefix(prefix) }.sorted()
        guard !chosen.isEmpty else { throw .empty(trimmed.isEmpty ? "the top folder" : trimmed) }
        let base = trimmed.split(separator: "/").last.map(String.init) ?? owner
        var plan: [(remote: String, local: String)] = []
        for name in chosen {
            let local = base + "/" + name.dropFirst(prefix.count)
            guard LocalNames.isSafe(local), LocalNames.isSafe(base) else { throw .unsafeName(name) }
            plan.append((name, local))
        }
        return plan.map { queueDownload(from: owner, remoteName: $0.remote, localName: $0.local) }
    }

    // MARK: The wishlist

    /// The saved searches.
    public var wishes: [Wishlist.Entry] { wishlist.entries }

    /// Saves a search (nil when the wishlist is full) and runs it at once.
    public func addWish(_ query: String, fetch: Bool = true) async -> Wishlist.Entry? {
        guard let entry = wishlist.add(query, fetch: fetch) else { return nil }
        saveWishlist()
        await checkWishlist()
        return wishlist.entries.first { $0.id == entry.id } ?? entry
    }

    public func removeWish(_ id: Int) -> Bool {
        let removed = wishlist.remove(id)
        if removed { saveWishlist() }
        return removed
    }

    /// Runs the saved searches every ``wishlistInterval`` until cancelled.
    public func runWishlist() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: wishlistInterval)
            await checkWishlist()
        }
    }

    /// Each saved search once: new matches kept, and fetched for the entries that ask it,
    /// into the client's folder under their last name (not over a file already there).
    func checkWishlist() async {
        guard !actingUser.isEmpty else { return }
        // Two owners' files of one name: the first only.
        var taken: Set<String> = []
        for entry in wishlist.entries {
            guard let hits = try? await search(entry.query) else { continue }
            let fresh = wishlist.record(hits, for: entry.id)
            guard !fresh.isEmpty else { continue }
            output.diagnostic("WISHLIST: \(fresh.count) new for \"\(ControlCharacters.escaped(entry.query))\"")
            guard entry.fetch else { continue }
            for hit in fresh {
                guard let local = LocalNames.lastPart(of: hit.name),
                    !FileManager.default.fileExists(atPath: absoluteLocal(local)), taken.insert(local).inserted
                else {
                    output.diagnostic(
                        "WISHLIST: \(ControlCharacters.escaped(hit.name)) from \(ControlCharacters.escaped(hit.owner)) "
                            + "not fetched: no plain local name for it, or a file of that name is here already")
                    continue
                }
                _ = startDownload(from: hit.owner, remoteName: hit.name, localName: local)
            }
        }
        saveWishlist()
    }

    private func saveWishlist() {
        guard let wishlistPath else { return }
        do {
            try wishlist.save(to: wishlistPath)
        } catch {
            output.diagnostic("WISHLIST: cannot keep it in \(wishlistPath): \(error.localizedDescription)")
        }
    }

    // MARK: Commands

    private var actingUser: String { connectedUser ?? lastKnownUser ?? "" }

    private func connect(_ user: String) async {
        if user == connectedUser {
            say(ResultLine.line(.connect, 2))
            return
        }
        if let current = connectedUser {
            // One user per client: the current one goes offline first, as DISCONNECT would.
            _ = await request(.disconnect(user: current))
            await stopServing()
        }
        // Serve before telling the server where: a peer may come as soon as it knows.
        let server: PeerFileServer
        do {
            // Only a client with an identity offers TLS: without one its user is bound to no key,
            // and nobody asks.
            server = try await PeerFileServer.start(
                folder: folder, host: peerHost, limits: uploadLimits, tls: directory.identity == nil ? nil : peerTLS,
                transfers: transfers, logger: logger)
        } catch {
            output.diagnostic("cannot open a listening socket for peers: \(error)")
            report(.connect, nil)
            return
        }
        folder.unpublishAll()
        let code = await request(.connect(user: user, port: String(server.port)))?.code
        if code == 0 {
            state = .online(SessionState.Online(user: user, peerServer: server))
        } else {
            await server.stop()
        }
        if code == 0 || code == 2 { lastKnownUser = user }
        // The result line once the published files are served and the shared folders are in
        // line, so that a script's next command finds them so.
        if code == 0 {
            await startServing(user)
            await openControl(user, server: server)
            if !wishlist.entries.isEmpty { Task { await self.checkWishlist() } }
        }
        report(.connect, code)
        if code == 2 {
            output.diagnostic(
                "\(user) is still connected from an earlier session; the server takes a dead entry offline "
                    + "once its peer has failed a few checks (by default within about a minute and a half), "
                    + "or type DISCONNECT \(user) first")
        }
    }

    /// After CONNECT: the files this client published for `user` earlier (its record on disk)
    /// are served again where the directory still lists them; what the directory lists and this
    /// client never published (someone else's PUBLISH in her name while she was offline) is
    /// deleted from the directory, never served. Then the shared folders are brought in line.
    private func startServing(_ user: String) async {
        var record: PublishedRecord?
        var recordLost = false
        if stateDirectory == nil {
            record = memoryRecords[user] ?? PublishedRecord()
            memoryRecords[user] = record
        }
        if let stateDirectory {
            do {
                record = try PublishedRecord(
                    stateDirectory: stateDirectory, server: DualStack.hostAndPort(directory.host, directory.port),
                    user: user)
            } catch {
                output.diagnostic(
                    "CONNECT: \(error); files published in earlier runs are not served until published again "
                        + "(and the directory's list is left as it is)")
                recordLost = true
                record = memoryRecords[user] ?? PublishedRecord()
                memoryRecords[user] = record
            }
        }
        let recorded = record?.names ?? []
        var existing: [String] = []
        if case .content(let files)? = await request(.listContent(user: user, owner: user)) {
            let listed = Set(files.map(\.name))
            // Gone from the directory (deleted from elsewhere): no longer published.
            record?.remove(recorded.subtracting(listed))
            existing = files.map(\.name).filter { recorded.contains($0) }
            if !recordLost { await deleteUnaccounted(files.map(\.name).filter { !recorded.contains($0) }, of: user) }
        } else {
            // What this client recorded is its own: served all the same.
            output.diagnostic(
                "CONNECT: cannot read the files the directory lists for \(user); serving what this client published")
        }
        folder.attach(record)
        let outcome = await sharing.connected(user: user, existing: existing) { command in
            try await self.stampedSend(command)
        }
        if outcome.published + outcome.deleted > 0 {
            output.diagnostic(
                "SHARE: \(outcome.published) files published, \(outcome.deleted) deleted (the shared folders changed)")
        }
        if outcome.failed > 0 {
            output.diagnostic(
                "SHARE: \(outcome.failed) changes did not reach the directory"
                    + (outcome.problem.map { ": \($0)" } ?? ""))
        }
        output.diagnostic(
            "serving to other peers the \(folder.publishedCount) files \(user) published (relative names from "
                + "\(folder.root)); nothing else is served: PUBLISH <file> adds one, SHARE <folder> a whole folder")
    }

    /// DELETEs from the directory the entries of `user` that this client did not publish, and
    /// says which on stderr.
    private func deleteUnaccounted(_ names: [String], of user: String) async {
        guard !names.isEmpty else { return }
        var deleted: [String] = []
        var failed = 0
        await withTaskGroup(of: (String, ResultCode?).self) { group in
            var next = 0
            func start() {
                let name = names[next]
                next += 1
                group.addTask { (name, try? await self.stampedSend(.delete(user: user, fileName: name)).code) }
            }
            while next < min(FolderSharing.concurrency, names.count) { start() }
            while let (name, code) = await group.next() {
                if next < names.count { start() }
                // 3: not published (any more): gone all the same.
                if code == 0 || code == 3 { deleted.append(name) } else { failed += 1 }
            }
        }
        let shown = deleted.sorted().prefix(10).map { ControlCharacters.escaped($0) }.joined(separator: ", ")
        output.diagnostic(
            """
            CONNECT: the directory listed \(names.count) files for \(ControlCharacters.escaped(user)) that this \
            client 
            """
                + "never published (someone else's PUBLISH in that name, or a record of this client's that was lost); "
                + "\(deleted.count) deleted from the directory"
                + (deleted.isEmpty ? "" : ": \(shown)\(deleted.count > 10 ? " and \(deleted.count - 10) more" : "")")
                + (failed > 0 ? "; \(failed) could not be deleted (not served all the same)" : ""))
    }

    /// After CONNECT, against a server that announces it: the control connection. Against any
    /// other server nothing is sent but a LIST_CONTENT for a user that does not exist.
    private func openControl(_ user: String, server: PeerFileServer) async {
        guard controlConnection,
            case .content(let capabilities)? = try? await stampedSend(
                .listContent(user: user, owner: ReservedFileName.capabilities)),
            capabilities.contains(ServerCapabilities.control)
        else { return }
        let output = self.output
        let directory = self.directory
        let offers = SessionState.ServerOffers(capabilities)
        // Connections opened at the server's request (to downloaders, to rendezvous, to the
        // relay), at most this many at once whatever arrives on the control connection.
        let outgoing = OutgoingConnections(limit: 16)
        let connection = ControlConnection(
            directory: directory, user: user, dateTime: { await self.dateTime() },
            onDial: { token, host, port in
                guard outgoing.start() else { return }
                Task {
                    defer { outgoing.finish() }
                    await server.dial(host: host, port: port, token: token)
                }
            },
            onMeet: { token in
                guard outgoing.start() else { return }
                Task {
                    defer { outgoing.finish() }
                    do {
                        let connection = try await HolePunch.connect(
                            directory: directory, user: user, token: token, dateTime: await self.dateTime())
                        await server.present(token, on: connection)
                    } catch {
                        output.diagnostic("a peer behind a NAT could not reach this client: \(error)")
                    }
                }
            },
            onRelayTo: { token in
                guard outgoing.start() else { return }
                Task {
                    defer { outgoing.finish() }
                    do {
                        let connection = try await RelayConnection.open(
                            directory: directory, user: user, token: token, dateTime: await self.dateTime())
                        await server.present(token, on: connection, relayed: true)
                    } catch {
                        output.diagnostic("a peer could not be served through the directory server's relay: \(error)")
                    }
                }
            },
            diagnostic: { output.diagnostic($0) })
        let code = await connection.start()
        if code == 0, case .online(var online) = state, online.user == user {
            online.control = connection
            online.offers = offers
            state = .online(online)
        } else if code == 0 {
            // Gone offline meanwhile.
            await connection.stop()
        } else {
            await connection.stop()
            output.diagnostic(
                "the directory server did not open a control connection for \(user)"
                    + (code.map { " (code \($0))" } ?? "")
                    + "; it checks this client's port instead, which fails behind a NAT")
        }
    }

    private func stopServing() async {
        let online = state.online
        state = .offline
        await online?.control?.stop()
        await online?.peerServer.stop()
        folder.unpublishAll()
        await sharing.disconnected()
    }

    private func share(_ path: String) async {
        let outcome: FolderSharing.Outcome?
        do {
            outcome = try await sharing.share(absolute(path))
        } catch {
            failures += 1
            say("SHARE FAIL")
            output.diagnostic("SHARE: \(error)")
            return
        }
        guard let outcome else {
            say("SHARE OK")
            output.diagnostic("SHARE: nobody is connected here; \(path) is shared from the next CONNECT on")
            return
        }
        if outcome.failed > 0 {
            failures += 1
            say("SHARE FAIL")
            output.diagnostic(
                "SHARE: \(outcome.published) files published, \(outcome.failed) not"
                    + (outcome.problem.map { ": \($0)" } ?? "") + "; the rest is tried again at the next CONNECT")
        } else {
            say("SHARE OK")
            output.diagnostic(
                "SHARE: \(outcome.published) files published (SHARED shows what is shared and what was skipped)")
        }
    }

    /// A folder typed at the prompt, as an absolute path (`~` is the home folder).
    private func absolute(_ path: String) -> String {
        if path == "~" || path.hasPrefix("~/"), let home = ProcessInfo.processInfo.environment["HOME"] {
            return home + path.dropFirst()
        }
        return path.hasPrefix("/") ? path : "\(workingDirectory)/\(path)"
    }

    private func absoluteLocal(_ localName: String) -> String {
        localName.hasPrefix("/") ? localName : "\(workingDirectory)/\(localName)"
    }

    /// GET_FILE: its result line. Listed as transfer `transfer` (one is started when nil).
    private func getFile(from owner: String, remoteName: String, localName: String, transfer: Int? = nil) async
        -> String
    {
        // `alice,bob,carol`: the owners to fetch from at once.
        let owners = owner.split(separator: ",").map(String.init)
        let localPath = absoluteLocal(localName)
        let transfers = self.transfers
        let id = transfer ?? transfers.start(.download, file: remoteName, peers: owners, localPath: localPath)
        let reply = await request(.listUsers(user: actingUser))
        guard case .users(let users)? = reply else {
            var reason = "cannot look the owner up"
            if let reply {
                reason += ": \(ResultLine.line(.listUsers, reply.code))"
                    + (actingUser.isEmpty ? " (no user is registered or connected in this client)" : "")
                output.diagnostic("GET_FILE: \(reason)")
            }
            transfers.end(id, .failed(reason: reason))
            return ResultLine.getFileFail
        }
        var sources: [PeerSource] = []
        for name in owners {
            if let peer = users.first(where: { $0.name == name }), let port = Int(peer.port) {
                if let source = await pinned(PeerSource(owner: name, host: peer.ip, port: port)),
                    let source = await route(source, remoteName: remoteName)
                {
                    sources.append(source)
                }
            } else {
                output.diagnostic("GET_FILE: \(name) is not connected")
            }
        }
        guard !sources.isEmpty else {
            transfers.end(id, .failed(reason: "no owner can be reached (the reasons are in the log)"))
            return ResultLine.getFileFail
        }
        let started = ContinuousClock.now
        let progressOutput = output.progress
        let progress: FileDownloader.Progress = { @Sendable bytes, total in
            transfers.progress(id, bytes: bytes, total: total)
            let elapsed = ContinuousClock.now - started
            guard let show = progressOutput, elapsed > .seconds(1) else { return }
            show(Self.progressLine(remoteName, bytes: bytes, total: total, elapsed: elapsed))
        }
        defer { progressOutput?(nil) }
        let output = self.output
        do {
            if plainGetFile {
                let size = try await FileDownloader(maxSize: maxDownloadSize).download(
                    remoteName, from: sources[0], to: localPath, progress: progress)
                transfers.progress(id, bytes: size, total: size)
                transfers.end(id, .done(verified: false))
            } else {
                let fetched = try await FileDownloader(maxSize: maxDownloadSize).fetch(
                    remoteName, from: sources, to: localPath, progress: progress,
                    notice: { output.diagnostic("GET_FILE \(remoteName): \($0)") })
                transfers.progress(id, bytes: fetched.size, total: fetched.size)
                transfers.end(id, .done(verified: fetched.verified))
            }
            return ResultLine.getFileOK
        } catch .noSuchFile {
            transfers.end(id, .notFound)
            return ResultLine.getFileNotFound
        } catch {
            transfers.end(id, .failed(reason: "\(error)"))
            output.diagnostic("GET_FILE \(remoteName) from \(owner): \(error)")
            return ResultLine.getFileFail
        }
    }

    /// `source` pinned to its owner's key when the directory holds one: every connection to it
    /// then runs TLS and goes on only with a peer that proves that key. Nil (with the reason)
    /// when the server binds keys but cannot say this owner's now: a download in clear from a
    /// user who may be bound is not an option.
    private func pinned(_ source: PeerSource) async -> PeerSource? {
        guard let online = state.online, online.offers.keys else { return source }
        guard let control = online.control else {
            output.diagnostic(
                """
                GET_FILE: cannot learn \(source.owner)'s key: this client has no control connection to the \
                directory server now
                """
            )
            return nil
        }
        do {
            guard let key = try await control.key(of: source.owner) else { return source }
            guard let peerTLS else {
                output.diagnostic(
                    "GET_FILE: \(source.owner) is bound to a key, and this client cannot run TLS to check it")
                return nil
            }
            var pinned = source
            pinned.pin = PeerPin(key: key, tls: peerTLS)
            return pinned
        } catch {
            output.diagnostic("GET_FILE: \(error); nothing was downloaded from \(source.owner)")
            return nil
        }
    }

    /// How to reach `source`: directly, unless the server says the owner is behind a NAT; then
    /// reversed (the owner connects to this client) when this client can be reached. Says so
    /// in one line when it is not direct; nil (with the reason) when there is no way.
    private func route(_ source: PeerSource, remoteName: String) async -> PeerSource? {
        guard let online = state.online, let control = online.control,
            await control.route(of: source.owner) == .unreachable
        else { return source }
        let (user, serverRelays) = (online.user, online.offers.relay)
        guard await control.isReachable() == true else {
            guard online.offers.punch else {
                output.diagnostic(
                    "GET_FILE: \(source.owner) is behind a NAT and so is this client, "
                        + "and the directory server cannot time a hole punch between them")
                return nil
            }
            var punched = source
            let owner = source.owner
            let directory = self.directory
            let output = self.output
            let relay:
                (@Sendable () async throws(DownloadError) -> (NIOAsyncChannel<ByteBuffer, ByteBuffer>, String))? =
                    serverRelays
                    ? { @Sendable () async throws(DownloadError) in
                        let token = try await control.relay(owner: owner)
                        let channel = try await RelayConnection.open(
                            directory: directory, user: user, token: token, dateTime: await self.dateTime())
                        return (channel, token)
                    } : nil
            let relays = serverRelays
            punched.punch = HolePunch(
                request: { () async throws(DownloadError) -> String in try await control.punch(owner: owner) },
                punch: { token async throws(DownloadError) in
                    try await HolePunch.connect(
                        directory: directory, user: user, token: token, dateTime: await self.dateTime())
                },
                relay: relay,
                failedBefore: punchFailures[owner].flatMap {
                    ContinuousClock.now - $0.at < .seconds(600) ? $0.reason : nil
                },
                onFailure: { reason in
                    Task { await self.notePunchFailure(owner, reason) }
                    output.diagnostic(
                        "GET_FILE \(remoteName): \(reason)"
                            + (relays
                                ? "; relaying through the directory server instead"
                                : """
                                    ; the directory server does not relay transfers (its operator can allow it: \
                                    p2p-server --relay-limit)
                                    """)
                    )
                })
            if let failed = punchFailures[owner], ContinuousClock.now - failed.at < .seconds(600) {
                output.diagnostic(
                    """
                    GET_FILE \(remoteName): \(owner) and this client are both behind NATs that no connection can \
                    be punched through
                    """
                        + (serverRelays
                            ? ": relayed through the directory server"
                            : """
                                , and the directory server does not relay transfers (its operator can allow it: \
                                p2p-server --relay-limit)
                                """)
                )
                guard serverRelays else { return nil }
            } else {
                output.diagnostic(
                    """
                    GET_FILE \(remoteName): \(owner) and this client are both behind NATs: punching a connection \
                    through them
                    """
                )
            }
            return punched
        }
        var reversed = source
        let owner = source.owner
        reversed.reversal = Reversal(
            request: { () async throws(DownloadError) -> String in try await control.reverse(owner: owner) },
            incoming: online.peerServer.reversedConnections)
        output.diagnostic(
            "GET_FILE \(remoteName): \(owner) is behind a NAT: it connects to this client (reversed connection)")
        return reversed
    }

    /// `GET_FILE big.iso: 412.0 MiB of 1.0 GiB (40%), 85.3 MiB/s, 0:07 left`; without a total
    /// (a peer that does not tell the size), the bytes, the time so far and the rate.
    static func progressLine(_ name: String, bytes: Int64, total: Int64?, elapsed: Duration) -> String {
        let seconds = max(0.001, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        let rate = Double(bytes) / seconds
        func clock(_ seconds: Double) -> String {
            let whole = Int(seconds.rounded())
            return String(format: "%d:%02d", whole / 60, whole % 60)
        }
        guard let total, total > 0 else {
            return "GET_FILE \(name): \(formatBytes(Double(bytes))) in \(clock(seconds)) (\(formatBytes(rate))/s)"
        }
        let percent = Int(Double(bytes) * 100 / Double(total))
        let left = rate > 0 ? clock(Double(total - bytes) / rate) + " left" : "time left unknown"
        return "GET_FILE \(name): \(formatBytes(Double(bytes))) of \(formatBytes(Double(total))) (\(percent)%), "
            + "\(formatBytes(rate))/s, \(left)"
    }

    /// A TRANSFERS line: `3 download big.iso from alice,bob: 412.0 MiB of 1.0 GiB (40%),
    /// 85.3 MiB/s, running`. Names from the directory and peers are printed escaped.
    static func transferLine(_ transfer: Transfer, now: ContinuousClock.Instant = .now) -> String {
        let peers = transfer.peers.map { ControlCharacters.escaped($0) }.joined(separator: ",")
        var line = "\(transfer.id) \(transfer.direction.rawValue) \(ControlCharacters.escaped(transfer.file)) "
            + (transfer.direction == .download ? "from" : "to") + " \(peers): \(formatBytes(Double(transfer.bytes)))"
        if let total = transfer.total, total > 0 {
            line += " of \(formatBytes(Double(total))) (\(Int(Double(transfer.bytes) * 100 / Double(total)))%)"
        }
        line += ", \(formatBytes(transfer.rate(now: now)))/s, "
        switch transfer.state {
        case .queued: line += "queued"
        case .running: line += "running"
        case .done(let verified): line += transfer.direction == .download && verified ? "done, verified" : "done"
        case .notFound: line += "FILE NOT EXIST"
        case .failed(let reason): line += "failed: \(ControlCharacters.escaped(reason))"
        }
        return line
    }

    // MARK: Helpers

    private func say(_ line: String) {
        output.line(Self.prompt + line)
    }

    /// Prints the result line of `operation` answered `code`, counting a failure.
    private func report(_ operation: DirectoryOperation, _ code: ResultCode?) {
        if code != 0 { failures += 1 }
        say(ResultLine.line(operation, code))
        // The spec's empty user name makes the server answer USER DOES NOT EXIST even when users
        // exist; say why.
        if code == 1, actingUser.isEmpty, Self.actsForAUser.contains(operation) {
            output.diagnostic(
                "no user is registered or connected in this client: REGISTER and CONNECT one first")
        }
    }

    private static let actsForAUser: Set<DirectoryOperation> = [.publish, .delete, .listUsers, .listContent, .search]

    /// Sends a request stamped with the time service's date-time; nil (with the reason on
    /// stderr) when the server cannot be reached or answers nonsense.
    /// For an `extension` operation, a server that closes without answering or answers
    /// something unreadable is said not to know it (a third-party server does not).
    private func request(_ command: Request.Command, extension: Bool = false) async -> Reply? {
        let request = Request(dateTime: await dateTime(), command: command)
        do {
            return try await directory.send(request)
        } catch {
            if `extension`, let reason = Self.notSupportedReason(error) {
                output.diagnostic(
                    "\(request.operation.rawValue): the directory server does not support it "
                        + "(an extension of this system's own servers; \(reason))")
            } else {
                output.diagnostic("\(request.operation.rawValue): \(error)")
            }
            return nil
        }
    }

    /// Why a server seems not to know an extension operation: it answered something unreadable,
    /// or closed or reset the connection instead of answering (a third-party server does one or
    /// the other for an operation it does not know). Nil for errors that say nothing of it.
    private static func notSupportedReason(_ error: DirectoryClientError) -> String? {
        switch error {
        case .invalidReply(let reason): return "\(reason)"
        case .connectionLost(let reason): return "it ended the connection without a reply: \(reason)"
        case .invalidRequest, .unreachable, .timedOut, .boundToAnotherKey, .keyRefused: return nil
        }
    }

    /// Sends a request stamped with the time service's date-time; errors are the caller's to
    /// report.
    private func stampedSend(_ command: Request.Command) async throws(DirectoryClientError) -> Reply {
        try await directory.send(Request(dateTime: await dateTime(), command: command))
    }

    /// The time service's date-time, or the local clock when it does not answer (said once
    /// on stderr until it answers again).
    private func dateTime() async -> String {
        if let timeService {
            do {
                let text = try await timeService.currentDateTime()
                timeServiceFailing = false
                return text
            } catch {
                if !timeServiceFailing {
                    output.diagnostic("\(error); using the local clock")
                    timeServiceFailing = true
                }
            }
        }
        return DateTimeFormat.string(from: Date())
    }
}

/// Counts connections this client opens at the directory server's request, to a bound.
final class OutgoingConnections: Sendable {
    private let count = Atomic<Int>(0)
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    /// False (nothing counted) when `limit` are under way.
    func start() -> Bool {
        guard count.wrappingAdd(1, ordering: .relaxed).newValue <= limit else {
            count.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func finish() { count.wrappingSubtract(1, ordering: .relaxed) }
}

/// `1.5 MiB` and the like.
func formatBytes(_ bytes: Double) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = bytes
    var unit = 0
    while value >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(Int(value)) B" : String(format: "%.1f %@", value, units[unit])
}
