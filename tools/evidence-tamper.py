#!/usr/bin/env python3
"""Make a tampered copy of an exported CrowNest run, for scripts/evidence-check.sh.

    evidence-tamper.py SRC DST CASE

Copies SRC (from `crownest export`) to DST and applies CASE. Prints two lines: the extra
arguments to give tools/verify-evidence.py (e.g. `--public-key DST/wrong-key.pem`, often
empty), then a text its report must contain. Exit 3 when CASE does not apply to this run
(no artifact, no stdout, no isolation, ...); exit 2 on usage errors.

Cases (every one must make the verifier exit 1):
  command, labels, template-identity, isolation, sandbox   edit that bundle field
  drop-event        remove one event from events.jsonl (seq 2)
  swap-events       swap two adjacent events (seq 2 and 3)
  artifact-bytes    flip one byte of the first artifact's file (same size)
  wrong-key         a fresh ed25519 key as --public-key
  stdout-chunk      edit the first stdout chunk's bytes
  stdout-rechained  edit the first stdout chunk, then recompute every hash and the bundle's
                    `events`/`terminalEvent` (what a store writer without the key can do):
                    the output digest catches it, or without one (recovered runs) the signature
  bundle-rebound    edit the command, then recompute bundleDigest in the terminal event, the
                    chain and the bundle (consistent forgery: only the signature catches it)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CASES = [
    "command", "labels", "template-identity", "isolation", "sandbox", "drop-event",
    "swap-events", "artifact-bytes", "wrong-key", "stdout-chunk", "stdout-rechained",
    "bundle-rebound",
]  # fmt: skip


def not_applicable(why: str) -> None:
    print(f"n/a: {why}", file=sys.stderr)
    sys.exit(3)


def load_events(d: str) -> list[dict[str, Any]]:
    with open(os.path.join(d, "events.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save_events(d: str, events: list[dict[str, Any]]) -> None:
    with open(os.path.join(d, "events.jsonl"), "w", encoding="utf-8") as f:
        for ev in events:
            f.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n")


def load_bundle(d: str) -> dict[str, Any]:
    with open(os.path.join(d, "evidence.json"), encoding="utf-8") as f:
        return json.load(f)


def save_bundle(d: str, bundle: dict[str, Any]) -> None:
    with open(os.path.join(d, "evidence.json"), "w", encoding="utf-8") as f:
        json.dump(bundle, f, ensure_ascii=False, indent=2)


def rechain(events: list[dict[str, Any]]) -> None:
    prev = bytes(32)
    for ev in events:
        body = {k: v for k, v in ev.items() if k != "hash"}
        prev = hashlib.sha256(prev + rfc8785.dumps(body)).digest()
        ev["hash"] = prev.hex()


def rebind(bundle: dict[str, Any], events: list[dict[str, Any]]) -> None:
    bundle["events"] = {"count": len(events), "chainHead": events[-1]["hash"]}
    bundle["terminalEvent"] = events[-1]


def edit_first_stdout(events: list[dict[str, Any]]) -> None:
    for ev in events:
        if ev.get("type") == "stdout":
            if "data" in ev and ev["data"]:
                d = ev["data"]
                ev["data"] = ("X" if d[0] != "X" else "Y") + d[1:]
            else:
                raw = bytearray(base64.b64decode(ev["dataBase64"]))
                raw[0] ^= 0x01
                ev["dataBase64"] = base64.b64encode(bytes(raw)).decode()
            return
    not_applicable("no stdout event")


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[3] not in CASES:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    src, dst, case = sys.argv[1:]
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    b = load_bundle(dst)
    extra, expect = "", ""

    if case == "command":
        b["command"] = ["python3", "-m", "pytest"]
        save_bundle(dst, b)
        expect = "command"
    elif case == "labels":
        labels = b["source"]["labels"]
        if labels:
            k = sorted(labels)[-1]
            labels[k] = labels[k] + "-edited"
        else:
            labels["added"] = "label"
        save_bundle(dst, b)
        expect = "source.labels"
    elif case == "template-identity":
        ident = b["template"].get("identity")
        if not ident or not ident.get("facts"):
            not_applicable("no template identity")
        k = sorted(ident["facts"])[0]
        ident["facts"][k] = str(ident["facts"][k]) + "-edited"
        save_bundle(dst, b)
        expect = "template.identity"
    elif case == "isolation":
        iso = b.get("isolation")
        if not iso:
            not_applicable("no isolation (no sandbox was made)")
        iso["securityBoundary"] = not iso["securityBoundary"] if isinstance(iso.get("securityBoundary"), bool) else "vm"
        save_bundle(dst, b)
        expect = "isolation.securityBoundary"
    elif case == "sandbox":
        b["sandbox"]["destroyed"] = not b["sandbox"]["destroyed"]
        save_bundle(dst, b)
        expect = "sandbox.destroyed"
    elif case in ("drop-event", "swap-events"):
        events = load_events(dst)
        if len(events) < 4:
            not_applicable("fewer than 4 events")
        if case == "drop-event":
            del events[1]
        else:
            events[1], events[2] = events[2], events[1]
        save_events(dst, events)
        expect = "seq"
    elif case == "artifact-bytes":
        if not b.get("artifacts"):
            not_applicable("no artifact")
        p = os.path.join(dst, "artifacts", b["artifacts"][0]["artifactId"])
        raw = bytearray(open(p, "rb").read())
        if not raw:
            not_applicable("empty artifact")
        raw[len(raw) // 2] ^= 0xFF
        open(p, "wb").write(bytes(raw))
        expect = "sha256"
    elif case == "wrong-key":
        if not os.path.exists(os.path.join(dst, "evidence.dsse.json")):
            not_applicable("no envelope")
        key = Ed25519PrivateKey.generate().public_key()
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        kp = os.path.join(dst, "wrong-key.pem")
        open(kp, "wb").write(pem)
        extra, expect = f"--public-key {kp}", "signature"
    elif case == "stdout-chunk":
        events = load_events(dst)
        edit_first_stdout(events)
        save_events(dst, events)
        expect = "hash"
    elif case == "stdout-rechained":
        events = load_events(dst)
        edit_first_stdout(events)
        rechain(events)
        rebind(b, events)
        save_events(dst, events)
        save_bundle(dst, b)
        out = (b.get("output") or {}).get("stdout") or {}
        if out.get("droppedBytes") == 0:
            expect = "output.stdout.sha256"
        else:
            # No output digest to catch it (a recovered run has no `output`, §2.3): only
            # the signature over the chain head does.
            expect = "signed Statement differs"
    elif case == "bundle-rebound":
        if not os.path.exists(os.path.join(dst, "evidence.dsse.json")):
            not_applicable("no envelope")
        events = load_events(dst)
        b["command"] = ["python3", "-m", "pytest"]
        events[0]["spec"]["command"] = b["command"]
        rest = {k: v for k, v in b.items() if k not in ("events", "terminalEvent")}
        events[-1]["bundleDigest"] = hashlib.sha256(rfc8785.dumps(rest)).hexdigest()
        rechain(events)
        rebind(b, events)
        save_events(dst, events)
        save_bundle(dst, b)
        expect = "signed Statement differs"
    print(extra)
    print(expect)


if __name__ == "__main__":
    main()
