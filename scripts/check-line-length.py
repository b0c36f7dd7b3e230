#!/usr/bin/env python3
"""Fails when a Swift line of ours is longer than .swift-format's lineLength (120 columns).

`make test` runs it. `swift format lint` checks more than this (and disagrees with some of the
code's deliberate layout); the column limit is the rule the code keeps.
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent
limit = json.loads((root / ".swift-format").read_text())["lineLength"]
folders = ["Sources", "Tests", "bench", "fuzz/Sources"]
long_lines = []
for folder in folders:
    for path in sorted((root / folder).rglob("*.swift")):
        if ".build" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if len(line) > limit:
                long_lines.append(f"{path.relative_to(root)}:{number}: {len(line)} columns")
for entry in long_lines:
    print(entry)
if long_lines:
    print(f"check-line-length: {len(long_lines)} lines over {limit} columns (.swift-format)")
    sys.exit(1)
print(f"check-line-length: every Swift line within {limit} columns")
