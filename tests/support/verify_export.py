#!/usr/bin/env python3
"""An independent verifier of a sessiond export (README, "Integrity"): written from the
README's description alone, with Python's standard library and `cryptography` for Ed25519.

    verify_export.py EXPORT_FILE PUBLIC_KEY_X

PUBLIC_KEY_X is the base64url `x` of the published checkpoint key (GET /v1/admin/checkpoints).
Exits 0 and prints "ok ..." for a complete, unaltered prefix of the log signed by that key;
exits 1 and prints why otherwise."""

import base64
import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def raw_members(line):
    """The top-level members of a JSON object line, each value as its exact text."""
    dec = json.JSONDecoder()
    ws = " \t\r\n"
    i = 0
    while line[i] in ws:
        i += 1
    assert line[i] == "{"
    i += 1
    out = {}
    while True:
        while line[i] in ws:
            i += 1
        if line[i] == "}":
            return out
        key, i = dec.raw_decode(line, i)
        while line[i] in ws:
            i += 1
        assert line[i] == ":"
        i += 1
        while line[i] in ws:
            i += 1
        start = i
        _, i = dec.raw_decode(line, i)
        out[key] = line[start:i]
        while line[i] in ws:
            i += 1
        if line[i] == ",":
            i += 1


def field(b):
    return struct.pack(">Q", len(b)) + b


def event_hash(m, prev_hash):
    text = lambda k: json.loads(m[k]).encode()
    num = lambda k: struct.pack(">q", json.loads(m[k]))
    h = hashlib.sha256()
    h.update(prev_hash)
    h.update(num("position"))
    h.update(field(text("stream_id")))
    h.update(num("stream_version"))
    h.update(field(text("event_type")))
    h.update(num("schema_version"))
    h.update(field(m["data"].encode()))
    h.update(field(m["metadata"].encode()))
    h.update(field(text("occurred_at")))
    h.update(field(text("recorded_at")))
    return h.digest()


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def main(path, x):
    key = Ed25519PublicKey.from_public_bytes(b64url(x))
    position, head = 0, bytes(32)
    checkpoint = None
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
        if lines and "filtered" in json.loads(lines[-1]):
            return "a filtered export cannot prove completeness"
        for n, line in enumerate(lines, 1):
            if checkpoint is not None:
                return f"line {n}: after the checkpoint"
            obj = json.loads(line)
            if "checkpoint" in obj:
                checkpoint = obj["checkpoint"]
                continue
            m = raw_members(line)
            if obj["position"] != position + 1:
                return f"position {position + 1} is missing"
            if bytes.fromhex(obj["prev_hash"]) != head:
                return f"position {obj['position']}: prev_hash does not match"
            stored = bytes.fromhex(obj["hash"])
            if not obj.get("redacted") and event_hash(m, head) != stored:
                return f"position {obj['position']}: content does not match its hash"
            position, head = obj["position"], stored
    if checkpoint is None:
        return "no checkpoint line"
    if checkpoint["position"] != position or bytes.fromhex(checkpoint["hash"]) != head:
        return f"the checkpoint signs position {checkpoint['position']}, the export ends at {position}"
    message = "sessiond-checkpoint-v1\n%d\n%s\n%s" % (
        checkpoint["position"],
        checkpoint["hash"],
        checkpoint["signed_at"],
    )
    try:
        key.verify(b64url(checkpoint["signature"]), message.encode())
    except InvalidSignature:
        return "the checkpoint's signature does not verify"
    print(f"ok {position} events up to position {position}")
    return None


if __name__ == "__main__":
    why = main(sys.argv[1], sys.argv[2])
    if why:
        print(why)
        sys.exit(1)
