import P2PDirectory
import P2PProtocol

/// GRDB also exports a `ResultCode` (SQLite's); in this module the name means the protocol's.
typealias ResultCode = P2PProtocol.ResultCode
