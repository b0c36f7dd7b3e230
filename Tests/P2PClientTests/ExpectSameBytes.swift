import Foundation
import Testing

/// Expects two byte sequences (a downloaded file and what was shared) to be equal, reporting
/// their sizes and the first offset where they differ. `#expect(a == b)` on two large arrays
/// would report a failure with a diff of them, which for megabytes takes hours and hangs the
/// whole test run instead of failing one test.
func expectSameBytes(
    _ actual: some Collection<UInt8>, _ expected: some Collection<UInt8>, _ comment: @autoclosure () -> String = "",
    sourceLocation: SourceLocation = #_sourceLocation
) {
    var offset = 0
    var a = actual.makeIterator()
    var b = expected.makeIterator()
    while true {
        switch (a.next(), b.next()) {
        case (nil, nil):
            return
        case (let x?, let y?) where x == y:
            offset += 1
        default:
            let note = comment()
            Issue.record(
                """
                \(note.isEmpty ? "" : note + ": ")\(actual.count) bytes where \(expected.count) were expected, \
                differing from offset \(offset)
                """,
                sourceLocation: sourceLocation)
            return
        }
    }
}
