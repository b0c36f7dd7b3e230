#!/usr/bin/env bash
# Runs `swift` (build, test) in a fixed environment.
#
# SwiftPM rebuilds everything when the environment it runs in differs from the last build's
# (it cannot know which variable a package manifest reads): `make run TIME_PORT=8001`, make's
# own MAKEFLAGS/MAKELEVEL, or even bash's `$_` after `./setup.sh` were each enough to recompile
# Hummingbird and the rest for minutes. Only what a build needs is passed on.
#
# It also drops SwiftPM's warnings about files a dependency does not declare (three lines on
# every build, about swift-distributed-tracing's CMakeLists.txt): nothing of ours to act on.
set -uo pipefail

keep=()
for name in PATH HOME USER LANG LC_ALL TMPDIR GIT_SSL_CAINFO SSL_CERT_FILE SSL_CERT_DIR \
        http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    if [ -n "${!name+x}" ]; then keep+=("$name=${!name}"); fi
done
while IFS= read -r name; do
    keep+=("$name=${!name}")
done < <(compgen -e | grep -E '^(SWIFT|SWIFTPM|XDG_)' || true)

unhandled="warning: '[^']+': found [0-9]+ file\\(s\\) which are unhandled; explicitly declare them as resources or exclude from the target"
env -i "${keep[@]}" "${SWIFT:-swift}" "$@" \
    2> >(sed -u -E -e "/^${unhandled}\$/d" -e "s/${unhandled}//" \
        -e '/^    \/.*\/\.build\/checkouts\/swift-distributed-tracing\/.*CMakeLists\.txt$/d' >&2)
status=$?
# Let the filter write its last lines before returning.
wait
exit $status
