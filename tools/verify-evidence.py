#!/usr/bin/env python3
"""Independent verifier of an exported CrowNest run (`crownest export RUN --out DIR`).

Written from docs/evidence.md alone (section numbers below are that page's), not from the
Rust sources, so that the page is shown to suffice. Checks, and reports every failure:

  * events.jsonl: each event's shape (§2), the hash chain (§3);
  * evidence.json: for crownest.evidence/v2, every field derived from the events (§4) and
    compared member by member (each differing field is named), the output streams against
    their stored chunks (§4, end), the bundle digest in the terminal event (§5);
  * artifacts/<artifactId>: bytes, size and sha256 equal to the bundle's (§8);
  * the in-toto Statement recomputed from the bundle (§6), validated with the
    `in_toto_attestation` package (v1 Statement API);
  * evidence.dsse.json: the envelope's payload equal to that Statement, byte for byte, and
    its ed25519 signature over the DSSE PAE valid for the public key (§7): --public-key PEM,
    default DIR/host-key.pem.

Older bundles (crownest.evidence/v1 and v1.1, §9) are checked minimally: the chain,
`events`/`terminalEvent`, the outcome fields and the artifacts (list and bytes). Their
in-toto view and signature (other digest rules) are not checked: --require-signature fails.

Exit 0 with one `ok: ...` line; exit 1 listing every problem; exit 2 on usage errors.
Needs Python >= 3.11, `cryptography`, `rfc8785` and `in-toto-attestation`
(tools/requirements-evidence.txt).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import sys
from typing import Any

try:
    import rfc8785
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement
except ImportError as e:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"verify-evidence: missing Python package ({e}); "
        "install tools/requirements-evidence.txt (scripts/evidence-check.sh makes a venv)\n"
    )
    sys.exit(2)

SCHEMA_V2 = "crownest.evidence/v2"
OLD_SCHEMAS = ("crownest.evidence/v1", "crownest.evidence/v1.1")
ZERO32 = bytes(32)
HEX64 = re.compile(r"^[0-9a-f]{64}$")
AT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://crownest.dev/workspace-run/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"

LIMIT_FIELDS = [
    "outputBytesPerStream", "artifactBytesEach", "artifactBytesTotal", "extractedBytes",
    "entries", "pathLength", "pathDepth", "pathBytes", "metadataRecordBytes",
    "compressionRatio", "memoryBytes", "pids", "openFiles", "timeoutMs", "killGraceMs",
    "finalizationBudgetMs",
]  # fmt: skip

# §2: per event type, (required fields, optional fields), besides runId/seq/at/type/hash.
EVENT_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "spec": ({"spec"}, set()),
    "status": ({"status"}, {"previous"}),
    "archive_progress": ({"phase", "bytesDone", "bytesTotal", "entries"}, set()),
    "archive_verified": ({"sizeBytes", "sha256", "upload"}, set()),
    "environment": ({"isolation"}, {"identity"}),
    "stdout": ({"offset"}, {"data", "dataBase64"}),
    "stderr": ({"offset"}, {"data", "dataBase64"}),
    "output_truncated": ({"stream", "bytesDropped"}, set()),
    "artifact_collected": ({"artifactId", "path", "sizeBytes", "sha256", "mode"}, {"skipped"}),
    "artifact_error": ({"path", "reason", "message"}, set()),
    "heartbeat": (set(), set()),
    "kill": ({"reason"}, {"signal", "action"}),
    "error": ({"code", "message"}, set()),
    "terminal": (
        {"status", "durationMs"},
        {"exitCode", "signal", "failure", "output", "sandbox", "crownestVersion", "bundleDigest"},
    ),
}
COMMON_FIELDS = {"runId", "seq", "at", "type", "hash"}
SPEC_FIELDS = (
    {"template", "backend", "command", "cwd", "env", "secretNames", "artifacts", "limits",
     "network", "labels"},
    {"keepSandbox", "idempotencyKey", "bestEffort"},
)  # fmt: skip
ISOLATION_FIELDS = (
    {"backend", "network", "processContainment", "securityBoundary"},
    {"memoryBytes", "pids", "user", "details", "notEnforced", "pooled"},
)
SANDBOX_FIELDS = ({"kept", "destroyed"}, {"removalPending", "keepUntil"})
STREAM_FIELDS = ({"totalBytes", "storedBytes", "droppedBytes", "sha256"}, set())


class DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKey(f"duplicate member {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """Strict JSON: duplicate members and NaN/Infinity are errors."""
    return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constants)


def jcs(value: Any) -> bytes:
    return rfc8785.dumps(value)


def sha256hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def short(value: Any, limit: int = 160) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def diff(given: Any, derived: Any, path: str, out: list[str]) -> None:
    """Type-strict deep comparison (true != 1); appends one line per differing leaf/member."""
    kg, kd = kind(given), kind(derived)
    if kg != kd:
        out.append(f"{path}: bundle has {short(given)}, the events give {short(derived)}")
        return
    if kg == "object":
        for k in sorted(set(given) | set(derived)):
            p = f"{path}.{k}" if path else k
            if k not in derived:
                out.append(f"{p}: present in the bundle ({short(given[k])}), absent from what the events give")
            elif k not in given:
                out.append(f"{p}: missing from the bundle; the events give {short(derived[k])}")
            else:
                diff(given[k], derived[k], p, out)
    elif kg == "array":
        if len(given) != len(derived):
            out.append(
                f"{path}: bundle has {len(given)} item(s) {short(given)}, "
                f"the events give {len(derived)} {short(derived)}"
            )
            return
        for i, (a, b) in enumerate(zip(given, derived)):
            diff(a, b, f"{path}[{i}]", out)
    elif given != derived:
        out.append(f"{path}: bundle has {short(given)}, the events give {short(derived)}")


def copy_opt(dst: dict[str, Any], src: dict[str, Any], key: str, as_key: str | None = None) -> None:
    if key in src:
        dst[as_key or key] = src[key]


class Verifier:
    def __init__(self, directory: str, public_key: str | None, require_signature: bool):
        self.dir = directory
        self.public_key_path = public_key
        self.require_signature = require_signature
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.summary: list[str] = []

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    # ---- files ----------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def load_events(self) -> list[dict[str, Any]] | None:
        p = self.path("events.jsonl")
        try:
            raw = open(p, "rb").read()
        except OSError as e:
            self.problem(f"events.jsonl: cannot read ({e.strerror})")
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.problem(f"events.jsonl: not UTF-8 ({e})")
            return None
        events = []
        for i, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                ev = parse_json(line)
            except ValueError as e:
                self.problem(f"events.jsonl line {i}: not a JSON object ({e})")
                continue
            if not isinstance(ev, dict):
                self.problem(f"events.jsonl line {i}: not a JSON object")
                continue
            events.append(ev)
        if not events:
            self.problem("events.jsonl: no events")
            return None
        return events

    def load_json_file(self, name: str, required: bool) -> Any:
        p = self.path(name)
        if not os.path.exists(p):
            if required:
                self.problem(f"{name}: missing")
            return None
        try:
            return parse_json(open(p, "rb").read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            self.problem(f"{name}: not valid JSON ({e})")
            return None

    # ---- §2 shapes ------------------------------------------------------------------------

    def check_fields(self, where: str, obj: Any, fields: tuple[set[str], set[str]]) -> bool:
        if not isinstance(obj, dict):
            self.problem(f"{where}: not an object ({short(obj)})")
            return False
        required, optional = fields
        missing = sorted(required - set(obj))
        extra = sorted(set(obj) - required - optional)
        if missing:
            self.problem(f"{where}: missing field(s) {', '.join(missing)}")
        if extra:
            self.problem(f"{where}: field(s) not in docs/evidence.md: {', '.join(extra)}")
        return not missing

    def check_no_null(self, where: str, value: Any) -> None:
        if value is None:
            self.problem(f"{where}: null (optional fields are omitted, never null)")
        elif isinstance(value, dict):
            for k, v in value.items():
                self.check_no_null(f"{where}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.check_no_null(f"{where}[{i}]", v)

    def check_event_shape(self, ev: dict[str, Any]) -> None:
        where = f"event seq {ev.get('seq')} ({ev.get('type')})"
        for f in ("runId", "seq", "at", "type", "hash"):
            if f not in ev:
                self.problem(f"{where}: missing {f}")
        t = ev.get("type")
        if t not in EVENT_FIELDS:
            self.problem(f"{where}: unknown event type {t!r}")
            return
        at = ev.get("at")
        if not isinstance(at, str) or not AT_RE.match(at):
            self.problem(f"{where}: `at` {short(at)} is not RFC 3339 UTC with 3 fraction digits and Z")
        body = {k: v for k, v in ev.items() if k not in COMMON_FIELDS}
        self.check_fields(where, body, EVENT_FIELDS[t])
        self.check_no_null(where, body)
        if t in ("stdout", "stderr"):
            has_d, has_b = "data" in ev, "dataBase64" in ev
            if has_d == has_b:
                self.problem(f"{where}: needs exactly one of data / dataBase64")
        elif t == "spec" and isinstance(ev.get("spec"), dict):
            spec = ev["spec"]
            self.check_fields(f"{where} spec", spec, SPEC_FIELDS)
            if isinstance(spec.get("limits"), dict):
                self.check_fields(f"{where} spec.limits", spec["limits"], (set(LIMIT_FIELDS), set()))
            if spec.get("network") not in ("none", "enabled"):
                self.problem(f"{where}: spec.network {short(spec.get('network'))} is not none/enabled")
            sn = spec.get("secretNames")
            if isinstance(sn, list) and sn != sorted(sn):
                self.problem(f"{where}: spec.secretNames is not sorted")
        elif t == "environment":
            self.check_fields(f"{where} isolation", ev.get("isolation"), ISOLATION_FIELDS)
            if "identity" in ev:
                self.check_fields(f"{where} identity", ev["identity"], ({"facts"}, set()))
        elif t == "archive_progress":
            if ev.get("phase") not in ("receiving", "verifying", "extracting"):
                self.problem(f"{where}: unknown phase {short(ev.get('phase'))}")
        elif t == "archive_verified":
            if ev.get("upload") not in ("direct", "staged", "existing"):
                self.problem(f"{where}: unknown upload {short(ev.get('upload'))}")
            if not isinstance(ev.get("sha256"), str) or not HEX64.match(ev["sha256"]):
                self.problem(f"{where}: sha256 is not 64 lowercase hex digits")
        elif t == "artifact_collected":
            if not isinstance(ev.get("sha256"), str) or not HEX64.match(ev["sha256"]):
                self.problem(f"{where}: sha256 is not 64 lowercase hex digits")
            if "skipped" in ev and ev["skipped"] == []:
                self.problem(f"{where}: skipped is empty (it is omitted when empty)")
        elif t == "kill":
            if "signal" in ev and ev["signal"] not in ("SIGTERM", "SIGKILL"):
                self.problem(f"{where}: unknown signal {short(ev['signal'])}")
            if "action" in ev and ev["action"] != "destroy":
                self.problem(f"{where}: unknown action {short(ev['action'])}")
        elif t == "terminal":
            if ev.get("status") not in ("succeeded", "failed", "canceled"):
                self.problem(f"{where}: status {short(ev.get('status'))} is not terminal")
            if "failure" in ev:
                self.check_fields(f"{where} failure", ev["failure"], ({"kind", "message"}, set()))
            if "sandbox" in ev:
                self.check_fields(f"{where} sandbox", ev["sandbox"], SANDBOX_FIELDS)
            if isinstance(ev.get("output"), dict):
                out = ev["output"]
                self.check_fields(f"{where} output", out, ({"stdout", "stderr"}, set()))
                for s in ("stdout", "stderr"):
                    if s in out:
                        self.check_fields(f"{where} output.{s}", out[s], STREAM_FIELDS)

    # ---- §3 chain -------------------------------------------------------------------------

    def check_chain(self, events: list[dict[str, Any]], run_id: Any) -> bool:
        ok = True
        prev = ZERO32
        bad_seqs: list[str] = []
        for i, ev in enumerate(events, 1):
            seq = ev.get("seq")
            where = f"event #{i} (seq {seq}, {ev.get('type')})"
            if kind(seq) != "number" or seq != i:
                bad_seqs.append(f"{where}: seq {short(seq)}, expected {i}")
                ok = False
            if ev.get("runId") != run_id:
                self.problem(f"{where}: runId {short(ev.get('runId'))} is not the run's ({short(run_id)})")
                ok = False
            body = {k: v for k, v in ev.items() if k != "hash"}
            try:
                h = hashlib.sha256(prev + jcs(body)).digest()
            except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
                self.problem(f"{where}: cannot be canonicalized ({e})")
                return False
            if ev.get("hash") != h.hex():
                self.problem(f"{where}: hash {short(ev.get('hash'))} does not recompute (expected {h.hex()})")
                ok = False
                # Go on from the stored hash so that one edit is reported once.
                try:
                    prev = bytes.fromhex(ev.get("hash", ""))
                    if len(prev) != 32:
                        raise ValueError
                except (ValueError, TypeError):
                    prev = h
            else:
                prev = h
        if bad_seqs:
            more = f" (and {len(bad_seqs) - 3} more)" if len(bad_seqs) > 3 else ""
            self.problem(f"seqs are not 1..N in order: {'; '.join(bad_seqs[:3])}{more}")
        terminals = [i for i, ev in enumerate(events) if ev.get("type") == "terminal"]
        if len(terminals) != 1:
            self.problem(f"the events have {len(terminals)} terminal event(s), expected exactly one")
            ok = False
        if events[-1].get("type") != "terminal":
            self.problem(f"the last event (seq {events[-1].get('seq')}) is a {events[-1].get('type')!r}, not the terminal")
            ok = False
        return ok

    # ---- §4 derivation --------------------------------------------------------------------

    def derive_bundle(self, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        specs = [ev for ev in events if ev.get("type") == "spec"]
        if events[0].get("type") != "spec":
            self.problem("event seq 1 is not the spec event (always seq 1 of a v2 run)")
        if len(specs) != 1:
            self.problem(f"{len(specs)} spec event(s), expected one")
        if not specs or not isinstance(specs[0].get("spec"), dict):
            return None
        spec_ev = specs[0]
        spec = spec_ev["spec"]
        term = events[-1]
        if term.get("type") != "terminal":
            return None
        envs = [ev for ev in events if ev.get("type") == "environment"]
        last_env = envs[-1] if envs else None
        verified = [ev for ev in events if ev.get("type") == "archive_verified"]
        if len(verified) > 1:
            self.problem(f"{len(verified)} archive_verified events (§4 reads \"the\" one)")
        av = verified[0] if verified else None

        b: dict[str, Any] = {"schema": SCHEMA_V2, "runId": spec_ev.get("runId")}
        b["status"] = term.get("status")
        for k in ("exitCode", "signal", "failure"):
            copy_opt(b, term, k)
        b["command"] = spec.get("command")
        b["cwd"] = spec.get("cwd")
        if spec.get("env"):
            b["env"] = spec["env"]
        if spec.get("secretNames"):
            b["secretNames"] = spec["secretNames"]
        template: dict[str, Any] = {"name": spec.get("template"), "backend": spec.get("backend")}
        if last_env is not None and "identity" in last_env:
            template["identity"] = last_env["identity"]
        b["template"] = template

        ts: dict[str, Any] = {"created": spec_ev.get("at")}
        if av is not None:
            ts["archiveVerified"] = av.get("at")
        seen_running = False
        for ev in events:
            if ev.get("type") != "status":
                continue
            st = ev.get("status")
            if st == "queued" and "started" not in ts:
                ts["started"] = ev.get("at")
            if st == "running":
                if "commandStarted" not in ts:
                    ts["commandStarted"] = ev.get("at")
                seen_running = True
            if st == "finalizing" and seen_running and "commandEnded" not in ts:
                ts["commandEnded"] = ev.get("at")
        ts["terminal"] = term.get("at")
        b["timestamps"] = ts

        source: dict[str, Any] = {}
        if av is not None:
            for k in ("sizeBytes", "sha256", "upload"):
                copy_opt(source, av, k)
        source["labels"] = spec.get("labels")
        b["source"] = source

        arts = []
        for ev in events:
            if ev.get("type") == "artifact_collected":
                a = {k: ev.get(k) for k in ("artifactId", "path", "sizeBytes", "sha256")}
                copy_opt(a, ev, "skipped")
                arts.append(a)
        b["artifacts"] = arts
        b["artifactErrors"] = [
            {k: ev.get(k) for k in ("path", "reason", "message")}
            for ev in events
            if ev.get("type") == "artifact_error"
        ]
        b["limits"] = spec.get("limits")
        b["network"] = spec.get("network")
        b["artifactsRequested"] = spec.get("artifacts")
        copy_opt(b, spec, "keepSandbox")
        copy_opt(b, term, "output")
        if last_env is not None:
            b["isolation"] = last_env.get("isolation")
        b["sandbox"] = term.get("sandbox")
        b["events"] = {"count": len(events), "chainHead": term.get("hash")}
        b["terminalEvent"] = term
        b["crownestVersion"] = term.get("crownestVersion")
        return b

    # ---- §4 end: output streams -----------------------------------------------------------

    def check_output(self, events: list[dict[str, Any]], output: Any) -> None:
        for stream in ("stdout", "stderr"):
            data = bytearray()
            for ev in events:
                if ev.get("type") != stream:
                    continue
                where = f"event seq {ev.get('seq')} ({stream})"
                if ev.get("offset") != len(data) or kind(ev.get("offset")) != "number":
                    self.problem(f"{where}: offset {short(ev.get('offset'))}, but {len(data)} byte(s) of {stream} came before it")
                if "data" in ev and isinstance(ev["data"], str):
                    data += ev["data"].encode("utf-8", "surrogatepass")
                elif isinstance(ev.get("dataBase64"), str):
                    try:
                        data += base64.b64decode(ev["dataBase64"], validate=True)
                    except (binascii.Error, ValueError) as e:
                        self.problem(f"{where}: dataBase64 is not standard base64 ({e})")
            if not isinstance(output, dict):
                continue
            s = output.get(stream)
            if not isinstance(s, dict):
                continue
            total, stored, dropped = s.get("totalBytes"), s.get("storedBytes"), s.get("droppedBytes")
            if stored != len(data):
                self.problem(f"output.{stream}.storedBytes is {short(stored)}, the {stream} events hold {len(data)} byte(s)")
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (total, stored, dropped)):
                self.problem(f"output.{stream}: totalBytes/storedBytes/droppedBytes are not all integers")
            elif total != stored + dropped:
                self.problem(f"output.{stream}: totalBytes {total} != storedBytes {stored} + droppedBytes {dropped}")
            if dropped == 0 and s.get("sha256") != sha256hex(bytes(data)):
                self.problem(
                    f"output.{stream}.sha256 is {short(s.get('sha256'))}, the {stream} events hash to {sha256hex(bytes(data))}"
                )

    # ---- §8 artifacts ---------------------------------------------------------------------

    def check_artifacts(self, artifacts: Any) -> int:
        if not isinstance(artifacts, list):
            self.problem("bundle artifacts: not a list")
            return 0
        n = 0
        for a in artifacts:
            if not isinstance(a, dict):
                self.problem(f"bundle artifact {short(a)}: not an object")
                continue
            aid = a.get("artifactId")
            if not isinstance(aid, str) or not aid or "/" in aid or aid in (".", ".."):
                self.problem(f"artifact {short(aid)}: not a usable file name")
                continue
            p = self.path("artifacts", aid)
            try:
                with open(p, "rb") as f:
                    blob = f.read()
            except OSError as e:
                self.problem(f"artifacts/{aid} ({a.get('path')}): cannot read ({e.strerror})")
                continue
            if len(blob) != a.get("sizeBytes"):
                self.problem(f"artifacts/{aid} ({a.get('path')}): {len(blob)} bytes, the bundle says {short(a.get('sizeBytes'))}")
            if sha256hex(blob) != a.get("sha256"):
                self.problem(f"artifacts/{aid} ({a.get('path')}): sha256 {sha256hex(blob)}, the bundle says {short(a.get('sha256'))}")
            n += 1
        d = self.path("artifacts")
        if os.path.isdir(d):
            known = {a.get("artifactId") for a in artifacts if isinstance(a, dict)}
            for name in sorted(os.listdir(d)):
                if name not in known:
                    self.notes.append(f"artifacts/{name} is not an artifact of the bundle (ignored)")
        return n

    # ---- §6 in-toto -----------------------------------------------------------------------

    def statement_of(self, bundle: dict[str, Any]) -> dict[str, Any]:
        def g(obj: Any, key: str) -> Any:
            return obj.get(key) if isinstance(obj, dict) else None

        whole = sha256hex(jcs(bundle))
        template = bundle.get("template")
        source = bundle.get("source")
        ts = bundle.get("timestamps")
        events = bundle.get("events")
        output = bundle.get("output")

        subjects = []
        for a in bundle.get("artifacts") or []:
            subjects.append({"name": g(a, "path"), "digest": {"sha256": g(a, "sha256")}})
        if isinstance(output, dict):
            for stream in ("stdout", "stderr"):
                s = output.get(stream)
                total = g(s, "totalBytes")
                if isinstance(total, int) and total > 0:
                    subjects.append({"name": f"logs/{stream}", "digest": {"sha256": g(s, "sha256")}})
        subjects.append(
            {"name": f"crownest-evidence/{bundle.get('runId')}.json", "digest": {"sha256": whole}}
        )
        deps = []
        if g(source, "sha256") is not None:
            deps.append({"name": "workspace.tar.gz", "digest": {"sha256": source["sha256"]}})
        started = g(ts, "commandStarted")
        if started is None:
            started = g(ts, "started")
        return {
            "_type": STATEMENT_TYPE,
            "subject": subjects,
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": {
                        "command": bundle.get("command"),
                        "cwd": bundle.get("cwd"),
                        "template": g(template, "name"),
                        "backend": g(template, "backend"),
                        # §6 says "absent values are null", but the bundle omits env and
                        # secretNames when empty (§4) and the Statements CrowNest signs carry
                        # {} and [] for them: an empty map / list, not null.
                        "env": bundle.get("env", {}),
                        "secretNames": bundle.get("secretNames", []),
                        "labels": g(source, "labels"),
                        "network": bundle.get("network"),
                        "artifacts": bundle.get("artifactsRequested"),
                    },
                    "internalParameters": {
                        "limits": bundle.get("limits"),
                        "isolation": bundle.get("isolation"),
                        "templateIdentity": g(template, "identity"),
                        "output": bundle.get("output"),
                        "sandbox": bundle.get("sandbox"),
                    },
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": {"id": f"https://crownest.dev/crownest@{bundle.get('crownestVersion')}"},
                    "metadata": {
                        "invocationId": bundle.get("runId"),
                        "startedOn": started,
                        "finishedOn": g(ts, "terminal"),
                    },
                    "byproducts": [
                        {
                            "name": "crownest.evidence",
                            "digest": {"sha256": whole},
                            "annotations": {
                                "status": bundle.get("status"),
                                "exitCode": bundle.get("exitCode"),
                                "eventsChainHead": g(events, "chainHead"),
                                "eventsCount": g(events, "count"),
                            },
                        }
                    ],
                },
            },
        }

    def validate_in_toto(self, statement: Any, what: str) -> bool:
        try:
            pb = json_format.Parse(json.dumps(statement), statement_pb2.Statement())
            Statement.copy_from_pb(pb).validate()
        except Exception as e:  # json_format.ParseError, ValueError
            self.problem(f"{what}: in-toto-attestation rejects it: {e}")
            return False
        return True

    # ---- §7 DSSE --------------------------------------------------------------------------

    def load_public_key(self) -> tuple[Ed25519PublicKey | None, str]:
        p = self.public_key_path or self.path("host-key.pem")
        if not os.path.exists(p):
            return None, p
        try:
            text = open(p, "rb").read()
        except OSError as e:
            self.problem(f"public key {p}: cannot read ({e.strerror})")
            return None, p
        try:
            if re.fullmatch(rb"\s*[0-9a-fA-F]{64}\s*", text):
                return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode().strip())), p
            key = serialization.load_pem_public_key(text)
        except ValueError as e:
            self.problem(f"public key {p}: not an SPKI PEM (or 64-hex) key ({e})")
            return None, p
        if not isinstance(key, Ed25519PublicKey):
            self.problem(f"public key {p}: not an ed25519 key ({type(key).__name__})")
            return None, p
        return key, p

    def check_dsse(self, envelope: Any, statement: dict[str, Any] | None) -> str:
        if not isinstance(envelope, dict):
            self.problem("evidence.dsse.json: not an object")
            return "envelope unreadable"
        self.check_fields(
            "evidence.dsse.json", envelope, ({"payloadType", "payload", "signatures"}, set())
        )
        ptype = envelope.get("payloadType")
        if ptype != PAYLOAD_TYPE:
            self.problem(f"evidence.dsse.json: payloadType {short(ptype)}, expected {PAYLOAD_TYPE}")
        try:
            payload = base64.b64decode(envelope.get("payload", ""), validate=True)
        except (binascii.Error, ValueError, TypeError) as e:
            self.problem(f"evidence.dsse.json: payload is not standard base64 ({e})")
            return "payload unreadable"
        if statement is not None:
            expected = jcs(statement)
            if payload != expected:
                try:
                    signed = parse_json(payload.decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as e:
                    self.problem(f"evidence.dsse.json: payload is not JSON ({e})")
                    signed = None
                if signed is not None:
                    d: list[str] = []
                    diff(signed, statement, "", d)
                    if d:
                        for line in d:
                            self.problem(
                                "signed Statement differs from the one derived from the bundle (§6): "
                                + line.replace("bundle has", "envelope has", 1).replace(
                                    "the events give", "the bundle gives", 1
                                )
                            )
                    else:
                        self.problem("evidence.dsse.json: payload is not the RFC 8785 form of the Statement")
                    self.validate_in_toto(signed, "signed Statement")
        sigs = envelope.get("signatures")
        if not isinstance(sigs, list) or not sigs:
            self.problem("evidence.dsse.json: no signatures")
            return "no signature"
        key, key_path = self.load_public_key()
        if key is None:
            if self.require_signature or self.public_key_path:
                self.problem(f"no public key to check the signature ({key_path} is missing)")
            else:
                self.notes.append(f"signature not checked: no public key ({key_path} is missing)")
            return "signature NOT checked (no key)"
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keyid = sha256hex(raw)
        ptype_b = ptype.encode("utf-8") if isinstance(ptype, str) else b""
        pae = b"DSSEv1 %d %s %d %s" % (len(ptype_b), ptype_b, len(payload), payload)
        good = False
        for i, s in enumerate(sigs):
            if not isinstance(s, dict):
                self.problem(f"evidence.dsse.json signatures[{i}]: not an object")
                continue
            if s.get("keyid") not in (None, keyid):
                continue
            try:
                sig = base64.b64decode(s.get("sig", ""), validate=True)
                key.verify(sig, pae)
                good = True
                break
            except (binascii.Error, ValueError, TypeError, InvalidSignature):
                continue
        if not good:
            ids = ", ".join(short(s.get("keyid")) for s in sigs if isinstance(s, dict))
            self.problem(
                f"evidence.dsse.json: no valid ed25519 signature by key {keyid} ({key_path}); "
                f"signature keyid(s): {ids}"
            )
            return "signature INVALID"
        return f"DSSE signature by {keyid[:16]}… valid"

    # ---- main -----------------------------------------------------------------------------

    def run(self) -> int:
        if not os.path.isdir(self.dir):
            self.problem(f"{self.dir}: not a directory")
            return self.report(None)
        events = self.load_events()
        bundle = self.load_json_file("evidence.json", required=True)
        if events is None or not isinstance(bundle, dict):
            if bundle is not None and not isinstance(bundle, dict):
                self.problem("evidence.json: not an object")
            return self.report(bundle)
        schema = bundle.get("schema")
        run_id = bundle.get("runId")
        for ev in events:
            self.check_event_shape(ev)
        chain_ok = self.check_chain(events, run_id)
        last = events[-1]
        self.summary.append(f"chain of {len(events)} events{' ok' if chain_ok else ' BROKEN'} (head {str(last.get('hash'))[:16]}…)")

        # events / terminalEvent name the last event (all schemas).
        d: list[str] = []
        diff(bundle.get("events"), {"count": len(events), "chainHead": last.get("hash")}, "events", d)
        diff(bundle.get("terminalEvent"), last, "terminalEvent", d)
        for line in d:
            self.problem(f"bundle field {line}")

        if schema in OLD_SCHEMAS:
            # A chain that opens with `spec` or ends with a bundle digest is a v2 chain
            # (§2.1, §5): the older, weaker rules must not be applied to it (§9).
            if (events and events[0].get("type") == "spec") or "bundleDigest" in last:
                self.problem(f"evidence.json: schema {short(schema)}, but the events are an evidence v2 chain (§9)")
                return self.report(bundle)
            return self.run_old(events, bundle, schema)
        if schema != SCHEMA_V2:
            self.problem(f"evidence.json: schema {short(schema)} is not one this verifier knows ({SCHEMA_V2}, {', '.join(OLD_SCHEMAS)})")
            return self.report(bundle)

        if last.get("type") == "terminal":
            missing = [f for f in ("sandbox", "crownestVersion", "bundleDigest") if f not in last]
            if missing:
                self.problem(f"terminal event: missing {', '.join(missing)} (present in every v2 run, §2.3)")
        statuses = [ev for ev in events if ev.get("type") == "status"]
        for i, ev in enumerate(statuses):
            if i == 0 and "previous" in ev:
                self.problem(f"event seq {ev.get('seq')} (status): the first status has `previous`")
            elif i > 0 and "previous" not in ev:
                self.problem(f"event seq {ev.get('seq')} (status): `previous` missing (absent only on the first status)")

        derived = self.derive_bundle(events)
        if derived is not None:
            d = []
            for k in sorted(set(bundle) | set(derived)):
                if k in ("events", "terminalEvent"):
                    continue
                if k not in derived:
                    d.append(f"{k}: present in the bundle ({short(bundle[k])}), not a field the events give")
                elif k not in bundle:
                    d.append(f"{k}: missing from the bundle; the events give {short(derived[k])}")
                else:
                    diff(bundle[k], derived[k], k, d)
            for line in d:
                self.problem(f"bundle field {line}")
            self.summary.append(f"bundle {'matches' if not d else 'DIFFERS from'} the events field by field")

        # §5
        rest = {k: v for k, v in bundle.items() if k not in ("events", "terminalEvent")}
        try:
            digest = sha256hex(jcs(rest))
        except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
            self.problem(f"evidence.json cannot be canonicalized ({e})")
            return self.report(bundle)
        if last.get("type") == "terminal":
            if last.get("bundleDigest") != digest:
                self.problem(
                    f"bundleDigest: the terminal event says {short(last.get('bundleDigest'))}, "
                    f"the bundle (without events/terminalEvent) hashes to {digest}"
                )
            else:
                self.summary.append("bundleDigest bound")
        self.check_no_null("evidence.json", bundle)

        before = len(self.problems)
        self.check_output(events, bundle.get("output"))
        if len(self.problems) == before:
            self.summary.append("output streams consistent" if "output" in bundle else "no output totals (stream offsets consistent)")
        n = self.check_artifacts(bundle.get("artifacts"))
        self.summary.append(f"{n} artifact(s) match")

        statement = self.statement_of(bundle)
        if self.validate_in_toto(statement, "in-toto Statement"):
            self.summary.append(f"in-toto Statement valid ({len(statement['subject'])} subject(s))")

        envelope = self.load_json_file("evidence.dsse.json", required=False)
        if envelope is None:
            if self.require_signature:
                self.problem("evidence.dsse.json: missing (--require-signature)")
            self.summary.append("unsigned (no evidence.dsse.json)")
        else:
            self.summary.append(self.check_dsse(envelope, statement))
        return self.report(bundle)

    def run_old(self, events: list[dict[str, Any]], bundle: dict[str, Any], schema: str) -> int:
        term = events[-1]
        d: list[str] = []
        for k in ("status", "exitCode", "signal", "failure"):
            if k in bundle or k in term:
                diff(bundle.get(k), term.get(k), k, d)
        arts = []
        for ev in events:
            if ev.get("type") == "artifact_collected":
                arts.append({k: ev.get(k) for k in ("artifactId", "path", "sizeBytes", "sha256")})
        given = [
            {k: a.get(k) for k in ("artifactId", "path", "sizeBytes", "sha256")} if isinstance(a, dict) else a
            for a in (bundle.get("artifacts") or [])
        ]
        diff(given, arts, "artifacts", d)
        for line in d:
            self.problem(f"bundle field {line}")
        n = self.check_artifacts(bundle.get("artifacts") or [])
        self.summary.append(f"{schema}: only chain, outcome and artifacts checked (§9); other fields are not provable")
        self.summary.append(f"{n} artifact(s) match")
        if os.path.exists(self.path("evidence.dsse.json")):
            msg = f"evidence.dsse.json of a {schema} bundle: its signature is not checked by this verifier (other digest rules, §9)"
            if self.require_signature:
                self.problem(msg)
            else:
                self.notes.append(msg)
        elif self.require_signature:
            self.problem("evidence.dsse.json: missing (--require-signature)")
        return self.report(bundle)

    def report(self, bundle: Any) -> int:
        run = bundle.get("runId") if isinstance(bundle, dict) else None
        for note in self.notes:
            print(f"note: {note}", file=sys.stderr)
        if self.problems:
            print(f"FAILED: {run or self.dir}: {len(self.problems)} problem(s)")
            for p in self.problems:
                print(f"  - {p}")
            return 1
        outcome = bundle.get("status")
        if "exitCode" in bundle:
            outcome += f", exit {bundle['exitCode']}"
        if isinstance(bundle.get("failure"), dict):
            outcome += f", {bundle['failure'].get('kind')}"
        print(f"ok: {run} ({bundle.get('schema')}, {outcome}): " + "; ".join(self.summary))
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Verify an exported CrowNest run (crownest export RUN --out DIR) from docs/evidence.md alone."
    )
    ap.add_argument("dir", metavar="DIR", help="the exported run directory")
    ap.add_argument("--public-key", metavar="PEM", help="ed25519 public key (SPKI PEM, or 64 hex digits); default DIR/host-key.pem")
    ap.add_argument("--require-signature", action="store_true", help="fail unless a DSSE envelope is present and its signature checks")
    args = ap.parse_args(argv)
    v = Verifier(args.dir, args.public_key, args.require_signature)
    try:
        return v.run()
    except Exception as e:  # a malformed export must fail with a report, not a traceback
        v.problem(f"cannot check further: {type(e).__name__}: {e}")
        return v.report(None)


if __name__ == "__main__":
    sys.exit(main())
