import Foundation

/// The date-time format every request carries: `DD/MM/YYYY HH:MM:SS` (19 bytes).
public enum DateTimeFormat {
    /// Formats `date` in `timeZone` (the local one by default).
    public static func string(from date: Date, timeZone: TimeZone = .current) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let c = calendar.dateComponents([.day, .month, .year, .hour, .minute, .second], from: date)
        func pad(_ value: Int?, _ width: Int) -> String {
            let text = String(value ?? 0)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return
            """
            \(pad(c.day, 2))/\(pad(c.month, 2))/\(pad(c.year, 4)) \
            \(pad(c.hour, 2)):\(pad(c.minute, 2)):\(pad(c.second, 2))
            """
    }

    /// Whether `text` has the shape `DD/MM/YYYY HH:MM:SS`.
    public static func isValid(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == ProtocolLimits.dateTimeLength else { return false }
        for (i, b) in bytes.enumerated() {
            switch i {
            case 2, 5: if b != UInt8(ascii: "/") { return false }
            case 10: if b != UInt8(ascii: " ") { return false }
            case 13, 16: if b != UInt8(ascii: ":") { return false }
            default: if b < UInt8(ascii: "0") || b > UInt8(ascii: "9") { return false }
            }
        }
        return true
    }
}
