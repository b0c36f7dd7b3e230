#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS seconds (default 60) from its committed
# seed corpus (fuzz/corpus/<target>), growing a working corpus under .build/fuzz/ (so the
# repository is not touched). A crash, a failed check or a leak stops the run: the input is
# left in .build/fuzz/artifacts/ and the script fails. Then keep the input as a regression
# case in the ordinary tests (Tests/P2PProtocolTests/FuzzRegressionTests.swift) and fix it.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     targets: fuzz-request fuzz-proxy-header fuzz-reply fuzz-peer-request fuzz-oplog-xdr
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz-request fuzz-proxy-header fuzz-reply fuzz-peer-request fuzz-oplog-xdr)

work=.build/fuzz
mkdir -p "$work/artifacts" "$work/bin"
clang_lib=$(dirname "$(readlink -f "$(command -v swiftc)")")/../lib/clang
runtime=$(ls "$clang_lib"/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a | head -1)

# Swift targets: every module instrumented for coverage and built with the address
# sanitizer; libFuzzer without its main (SwiftPM gives each executable one, which hands
# the target to libFuzzer). Release: several times the executions per second of debug.
# (The linker warns about every sanitizer symbol it cannot export: the build's output goes to
# a log, shown when the build fails.)
echo "fuzz: building the targets (log: $work/build.log)"
if ! (cd fuzz && ../scripts/swift.sh build -c release --build-path ../$work/swift \
    -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,trace-cmp,inline-8bit-counters,pc-table \
    -Xlinker "$runtime" -Xlinker -lstdc++) > "$work/build.log" 2>&1; then
    grep -v "Cannot export local symbol" "$work/build.log" | tail -40 >&2
    exit 1
fi
for target in fuzz-request fuzz-proxy-header fuzz-reply fuzz-peer-request; do
    cp "$work/swift/release/$target" "$work/bin/$target"
done
# The C log server's XDR routines, with clang's own libFuzzer.
if ! clang -g -O1 -fsanitize=fuzzer,address $(pkg-config --cflags libtirpc) -ISources/COperationLog/include \
    fuzz/xdr/fuzz_oplog_xdr.c Sources/COperationLog/operations_xdr.c $(pkg-config --libs libtirpc) \
    -o "$work/bin/fuzz-oplog-xdr" >> "$work/build.log" 2>&1; then
    grep -v "Cannot export local symbol" "$work/build.log" | tail -40 >&2
    exit 1
fi

# Swift's own crash handler would print its backtrace over the sanitizer's report.
export SWIFT_BACKTRACE=enable=no
status=0
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    mkdir -p "$corpus"
    max_len=4096
    [ "$target" = fuzz-proxy-header ] && max_len=1024
    echo "fuzz: $target for ${seconds} s"
    if ! "$work/bin/$target" "$corpus" "fuzz/corpus/$target" -max_total_time="$seconds" -max_len="$max_len" \
        -artifact_prefix="$work/artifacts/$target-" -print_final_stats=1 > "$work/$target.log" 2>&1; then
        echo "fuzz: $target FAILED; see $work/$target.log and $work/artifacts/" >&2
        tail -30 "$work/$target.log" >&2
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$target.log" | grep -o '[0-9]*$' || echo "?")
    coverage=$(grep -o 'cov: [0-9]*' "$work/$target.log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $target ran $runs inputs, coverage $coverage edges, corpus $(ls "$corpus" | wc -l) inputs"
done
exit $status
