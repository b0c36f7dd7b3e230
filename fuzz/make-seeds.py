#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/ (committed; run again
only to change the seeds). Each seed is a well-formed input, or a near miss, of what the
decoder reads from strangers."""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
DT = "03/12/2026 10:00:00"
OPERATIONS = ["REGISTER", "UNREGISTER", "CONNECT", "DISCONNECT", "PUBLISH", "DELETE", "LIST_USERS",
              "LIST_CONTENT", "SEARCH"]


def fields(*values):
    return b"".join(v.encode() + b"\0" for v in values)


def xdr_string(text):
    data = text.encode()
    return struct.pack(">I", len(data)) + data + b"\0" * ((4 - len(data) % 4) % 4)


def record(user, operation, file_name=""):
    return xdr_string(user) + xdr_string(operation) + xdr_string(file_name) + xdr_string(DT)


seeds = {
    "fuzz-request": {
        "register": fields("REGISTER", DT, "alice"),
        "unregister": fields("UNREGISTER", DT, "alice"),
        "connect": fields("CONNECT", DT, "alice", "5000"),
        "disconnect": fields("DISCONNECT", DT, "alice"),
        "publish": fields("PUBLISH", DT, "alice", "notes.txt", "my notes"),
        "delete": fields("DELETE", DT, "alice", "notes.txt"),
        "list-users": fields("LIST_USERS", DT, "alice"),
        "list-content": fields("LIST_CONTENT", DT, "alice", "bob"),
        "search": fields("SEARCH", DT, "alice", "holiday photos"),
        "truncated": fields("PUBLISH", DT, "alice")[:-3],
        "unknown": fields("FETCH", DT, "alice"),
        "long-field": b"REGISTER\0" + DT.encode() + b"\0" + b"a" * 300 + b"\0",
        "not-utf8": b"REGISTER\0" + DT.encode() + b"\0\xc3\x28\0",
    },
    "fuzz-proxy-header": {
        "v1-tcp4": b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 4242\r\n" + fields("REGISTER", DT, "alice"),
        "v1-tcp6": b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 4242\r\n",
        "v1-unknown": b"PROXY UNKNOWN\r\n",
        "v1-bad": b"PROXY TCP4 300.1.1.1 192.0.2.1 40000 4242\r\n",
        "v2-tcp4": b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c" + bytes([203, 0, 113, 7, 192, 0, 2, 1]) + struct.pack(">HH", 40000, 4242),
        "v2-tcp6": b"\r\n\r\n\0\r\nQUIT\n\x21\x21\0\x24" + bytes(range(16)) + bytes(range(16, 32)) + struct.pack(">HH", 1, 2),
        "v2-local": b"\r\n\r\n\0\r\nQUIT\n\x20\0\0\0",
        "v2-tlv": b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x13" + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack(">HH", 1, 2) + b"\x04\0\x04abcd",
    },
    # First byte: the operation (index in DirectoryOperation.allCases); the rest, the reply.
    "fuzz-reply": {
        "register-ok": bytes([0]) + b"0\0",
        "register-raw-code": bytes([0, 1]),
        "list-users": bytes([6]) + b"0\0" + fields("2", "alice", "192.0.2.1", "5000", "bob", "192.0.2.2", "5001"),
        "list-users-raw": bytes([6, 0]) + fields("1", "alice", "192.0.2.1", "5000"),
        "list-content": bytes([7]) + b"0\0" + fields("1", "notes.txt", "my notes"),
        "search": bytes([8]) + b"0\0" + fields("1", "alice", "notes.txt", "my notes"),
        "bad-count": bytes([7]) + b"0\0" + fields("-1"),
        "file-raw": bytes([2]) + b"\0hello",
        "file-c-string": bytes([2]) + b"0\0hello\0",
        "file-size-prefixed": bytes([2]) + b"05\0hello",
        "file-refused": bytes([2]) + b"1\0",
        "file-info": bytes([2]) + b"0\0" + fields("5", "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
    },
    # First byte: which XDR routine (0 record, 1 batch, 2 result, 3 result batch).
    "fuzz-oplog-xdr": {
        "record": bytes([0]) + record("alice", "PUBLISH", "notes.txt"),
        "batch": bytes([1]) + struct.pack(">I", 2) + record("alice", "REGISTER") + record("bob", "CONNECT"),
        "result": bytes([2]) + record("alice", "DELETE", "notes.txt") + struct.pack(">i", 0),
        "result-batch": bytes([3]) + struct.pack(">I", 1) + record("alice", "LIST_USERS") + struct.pack(">i", 3),
        "huge-count": bytes([3]) + struct.pack(">I", 0x7FFFFFFF),
        "long-string": bytes([0]) + struct.pack(">I", 300) + b"a" * 300,
    },
    "fuzz-peer-request": {
        "plain": fields("GET_FILE", "notes.txt"),
        "absolute": fields("GET_FILE", "/home/alice/.ssh/id_ed25519"),
        "peer-check": fields("GET_FILE", "/.p2p-reserved/peer-check"),
        "info": fields("GET_FILE", "/.p2p-reserved/v1/info/notes.txt"),
        "range": fields("GET_FILE", "/.p2p-reserved/v1/range/4194304-4194304/notes.txt"),
        "range-overflow": fields("GET_FILE", "/.p2p-reserved/v1/range/9223372036854775807-1/notes.txt"),
        "range-negative": fields("GET_FILE", "/.p2p-reserved/v1/range/-1-5/notes.txt"),
        "reversed": fields("GET_FILE", "/.p2p-reserved/v1/reversed/0123456789abcdef0123456789abcdef"),
        "control-characters": fields("GET_FILE", "x\nalice UNREGISTER 01/01/2026 00:00:00\x1b[2J"),
        "wrong-operation": fields("PUT_FILE", "notes.txt"),
    },
}

for target, inputs in seeds.items():
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    for name, data in inputs.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
