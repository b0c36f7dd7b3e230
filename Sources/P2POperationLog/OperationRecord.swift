/// One served request, as the operation log prints it (PROTOCOL.md section 8).
public struct OperationRecord: Sendable, Hashable {
    public var user: String
    /// The operation name as on the wire: REGISTER, PUBLISH, ...
    public var operation: String
    /// The file name for PUBLISH and DELETE, "" otherwise.
    public var fileName: String
    /// The date-time that came in the request.
    public var dateTime: String
    /// The result code the server answered (0 success; the operation's codes otherwise), or
    /// nil when there is none (EXPIRE, which no client asked for). Sent with version 2 of the
    /// RPC program; the printed line leaves it out unless the log server is asked to show it.
    public var result: Int32?

    public init(user: String, operation: String, fileName: String = "", dateTime: String, result: Int32? = nil) {
        self.user = user
        self.operation = operation
        self.fileName = fileName
        self.dateTime = dateTime
        self.result = result
    }

    /// The line the log server prints for this record.
    public var logLine: String {
        fileName.isEmpty ? "\(user) \(operation) \(dateTime)" : "\(user) \(operation) \(fileName) \(dateTime)"
    }
}

/// Where the directory server sends a record for every request it serves.
/// `submit` must never block or fail the request.
public protocol OperationLogSink: Sendable {
    func submit(_ record: OperationRecord)
}

/// Counters of an operation log's delivery.
public struct OperationLogStatistics: Sendable, Hashable, CustomStringConvertible {
    /// Records the log server acknowledged.
    public var delivered: Int = 0
    /// Records dropped because the queue was full.
    public var dropped: Int = 0
    /// Records still waiting to be sent.
    public var pending: Int = 0
    /// RPC calls made (a call may carry many records).
    public var calls: Int = 0
    /// Calls that failed and were made again (their records stayed queued).
    public var retries: Int = 0

    public init() {}

    public var description: String {
        "delivered \(delivered) records in \(calls) calls, dropped \(dropped), pending \(pending)"
    }
}
