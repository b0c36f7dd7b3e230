import P2PProtocol

/// The exact result lines of PROTOCOL.md section 5, without the `c> ` prefix.
public enum ResultLine {
    /// The line for `operation` answered `code`; nil `code` means the server could not be
    /// reached or gave no valid reply.
    public static func line(_ operation: DirectoryOperation, _ code: ResultCode?) -> String {
        let name = operation.rawValue
        switch (operation, code?.rawValue) {
        case (_, 0): return "\(name) OK"
        case (.register, 1): return "USERNAME IN USE"
        case (.unregister, 1): return "USER DOES NOT EXIST"
        case (.connect, 1): return "CONNECT FAIL, USER DOES NOT EXIST"
        case (.connect, 2): return "USER ALREADY CONNECTED"
        case (.disconnect, 1): return "DISCONNECT FAIL / USER DOES NOT EXIST"
        case (.disconnect, 2): return "DISCONNECT FAIL / USER NOT CONNECTED"
        case (.publish, 1), (.delete, 1), (.listUsers, 1), (.listContent, 1), (.search, 1):
            return "\(name) FAIL, USER DOES NOT EXIST"
        case (.publish, 2), (.delete, 2), (.listUsers, 2), (.listContent, 2), (.search, 2):
            return "\(name) FAIL, USER NOT CONNECTED"
        case (.publish, 3): return "PUBLISH FAIL, CONTENT ALREADY PUBLISHED"
        case (.delete, 3): return "DELETE FAIL, CONTENT NOT PUBLISHED"
        case (.listContent, 3): return "LIST_CONTENT FAIL, REMOTE USER DOES NOT EXIST"
        case (.disconnect, _): return "DISCONNECT FAIL"
        default: return "\(name) FAIL"
        }
    }

    public static let getFileOK = "GET_FILE OK"
    public static let getFileNotFound = "GET_FILE FAIL / FILE NOT EXIST"
    public static let getFileFail = "GET_FILE FAIL"
}
