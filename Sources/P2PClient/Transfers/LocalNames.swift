import P2PProtocol

/// Local names for files whose remote names come from other users (who may send anything).
public enum LocalNames {
    /// The last part of `remoteName`, when that is a plain name.
    public static func lastPart(of remoteName: String) -> String? {
        let last = remoteName.split(separator: "/").last.map(String.init)
        return last.flatMap { isSafe($0) ? $0 : nil }
    }

    /// A relative path that stays inside the client's folder: not absolute, no empty, `.` or
    /// `..` part, no control characters.
    public static func isSafe(_ name: String) -> Bool {
        guard !name.isEmpty, !name.hasPrefix("/"), !ControlCharacters.containsControlCharacters(name) else {
            return false
        }
        return name.split(separator: "/", omittingEmptySubsequences: false).allSatisfy {
            !$0.isEmpty && $0 != "." && $0 != ".."
        }
    }
}
