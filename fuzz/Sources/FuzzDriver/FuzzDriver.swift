#if canImport(Glibc)
import Glibc
#endif
import P2PProtocol

/// libFuzzer's entry point for programs that have a `main` of their own (SwiftPM gives every
/// executable one): runs the fuzzer with the command line's options on `target`.
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ target: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// Runs libFuzzer on `target` with this process's arguments, and exits with its status.
public func runFuzzer(_ target: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, target))
}

extension ProtocolError {
    /// What the error decides, without what depends on how much had arrived: a field found too
    /// long is reported with the bytes seen so far, which differ when the bytes come in pieces.
    public var decision: ProtocolError {
        if case .fieldTooLong(let index, _) = self { return .fieldTooLong(index: index, length: 0) }
        return self
    }
}

extension Result where Failure == ProtocolError {
    /// The same result, its error reduced to ``ProtocolError/decision``.
    public var decision: Result<Success, ProtocolError> { mapError(\.decision) }
}
