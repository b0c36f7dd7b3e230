import Foundation
import P2PProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// Why a file under a shared folder is not published.
public enum SkipReason: String, Sendable, CaseIterable, Comparable {
    /// Its name, or a folder on its way, starts with a dot.
    case hidden = "hidden"
    /// The protocol's file names have no spaces (spec section 2).
    case space = "a space in the name"
    /// Over the protocol's field limit.
    case tooLong = "name over 255 bytes"
    /// Text on the wire is UTF-8.
    case notUTF8 = "name not UTF-8"
    /// Directory servers of ours refuse names with control characters (a newline, an escape).
    case controlCharacter = "a control character in the name"
    /// Not followed, so that nothing leads out of the folder.
    case symbolicLink = "symbolic link"
    /// A FIFO, socket or device.
    case notRegular = "not a regular file"
    /// Could not be read (permissions).
    case unreadable = "cannot be read"

    public static func < (lhs: SkipReason, rhs: SkipReason) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// What a scan of (part of) a shared folder found.
struct FolderScan: Sendable {
    /// Publishable files: wire name -> description.
    var files: [String: String] = [:]
    /// Paths relative to the shared folder that are not published, with the reason.
    var skipped: [String: SkipReason] = [:]
    /// Folders walked (absolute paths; hidden ones are not) that could not be followed, and why.
    var unfollowed: [String: String] = [:]
    /// Folders walked that are followed now.
    var followed: [String] = []
}

/// Walks a shared folder: regular, non-hidden files whose names the protocol can carry, each
/// with a description people find useful without typing one (kind and size). Symbolic links
/// are never followed. Blocking: call it off the event loops and the cooperative pool.
enum FolderScanner {
    /// Scans `folder` (absolute, inside the share `root` whose files are named `prefix` +
    /// their path relative to `root`), and its subfolders when `deep`. `follow` starts following
    /// each folder before its entries are read (so that nothing created meanwhile goes unseen),
    /// and says why when it cannot.
    static func scan(
        _ folder: String, share root: String, prefix: String, deep: Bool, follow: ((String) -> String?)? = nil
    ) -> FolderScan {
        var scan = FolderScan()
        var pending = [folder]
        while let current = pending.popLast() {
            if let follow {
                if let problem = follow(current) {
                    scan.unfollowed[current] = problem
                } else {
                    scan.followed.append(current)
                }
            }
            guard let directory = opendir(current) else { continue }
            defer { closedir(directory) }
            let relativeFolder = current == root ? "" : String(current.dropFirst(root.count + 1)) + "/"
            while let entry = readdir(directory) {
                let entryName = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    Array(raw.prefix(while: { $0 != 0 }))
                }
                if entryName == Array(".".utf8) || entryName == Array("..".utf8) { continue }
                guard let name = String(validating: entryName, as: UTF8.self) else {
                    scan.skipped[relativeFolder + String(decoding: entryName, as: UTF8.self)] = .notUTF8
                    continue
                }
                let relative = relativeFolder + name
                let path = current + "/" + name
                var info = stat()
                guard lstat(path, &info) == 0 else { continue }
                let kind = info.st_mode & S_IFMT
                if name.hasPrefix(".") {
                    // A hidden folder counts once, whatever it holds.
                    scan.skipped[relative] = .hidden
                    continue
                }
                if kind == S_IFDIR {
                    if deep { pending.append(path) }
                    continue
                }
                let wireName = prefix + relative
                if let reason = skipReason(wireName: wireName, kind: kind, path: path) {
                    scan.skipped[relative] = reason
                    continue
                }
                scan.files[wireName] = describe(name: name, size: Int64(info.st_size))
            }
        }
        return scan
    }

    private static func skipReason(wireName: String, kind: mode_t, path: String) -> SkipReason? {
        if kind == S_IFLNK { return .symbolicLink }
        if kind != S_IFREG { return .notRegular }
        if wireName.contains(" ") || wireName.contains("\t") { return .space }
        if ControlCharacters.containsControlCharacters(wireName) { return .controlCharacter }
        if wireName.utf8.count > ProtocolLimits.maxFieldBytes { return .tooLong }
        if access(path, R_OK) != 0 { return .unreadable }
        return nil
    }

    /// `JPEG image, 2.4 MiB`: the kind of file from its extension, and its size.
    static func describe(name: String, size: Int64) -> String {
        let fileExtension = name.split(separator: ".", omittingEmptySubsequences: false).dropFirst().last
            .map { $0.lowercased() }
        let kind: String
        if let fileExtension, let known = kinds[fileExtension] {
            kind = known
        } else if let fileExtension, !fileExtension.isEmpty, fileExtension.count <= 8 {
            kind = fileExtension.uppercased() + " file"
        } else {
            kind = "file"
        }
        return "\(kind), \(formatBytes(Double(size)))"
    }

    private static let kinds: [String: String] = {
        var table: [String: String] = [:]
        let groups: [(String, [String])] = [
            ("JPEG image", ["jpg", "jpeg"]), ("PNG image", ["png"]), ("GIF image", ["gif"]),
            ("WebP image", ["webp"]), ("HEIC photo", ["heic"]), ("SVG image", ["svg"]),
            ("raw photo", ["cr2", "nef", "arw", "dng", "raf"]),
            ("MP3 audio", ["mp3"]), ("FLAC audio", ["flac"]), ("Ogg audio", ["ogg", "opus"]),
            ("WAV audio", ["wav"]), ("AAC audio", ["m4a", "aac"]),
            ("MP4 video", ["mp4", "m4v"]), ("Matroska video", ["mkv"]), ("WebM video", ["webm"]),
            ("AVI video", ["avi"]), ("QuickTime video", ["mov"]),
            ("PDF document", ["pdf"]), ("text", ["txt", "text"]), ("Markdown text", ["md"]),
            ("Word document", ["doc", "docx"]), ("OpenDocument text", ["odt"]),
            ("spreadsheet", ["xls", "xlsx", "ods", "csv"]), ("slides", ["ppt", "pptx", "odp"]),
            ("e-book", ["epub", "mobi"]), ("HTML page", ["html", "htm"]),
            ("ZIP archive", ["zip"]), ("tar archive", ["tar", "tgz", "gz", "bz2", "xz", "zst"]),
            ("7-Zip archive", ["7z"]), ("disk image", ["iso", "img"]),
            ("C source", ["c", "h"]), ("Swift source", ["swift"]), ("Python source", ["py"]),
            ("JSON data", ["json"]), ("XML data", ["xml"]),
        ]
        for (kind, extensions) in groups {
            for fileExtension in extensions { table[fileExtension] = kind }
        }
        return table
    }()
}
