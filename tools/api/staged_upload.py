"""A staged upload through the Python client generated from the served OpenAPI document.

scripts/api-contract.sh generates the package `crownest_api` with openapi-python-client and
runs this program against a live `crownest serve` (the process backend offered). It creates
a run, sends its archive as a staged transfer in chunks (each with its digest: the first
chunk in Content-Digest, the others in X-Chunk-Sha256, and one chunk with a wrong digest
that must be refused), completes the transfer, starts the run, follows its events to the
end, and reads its evidence; any answer that is not what the contract says fails loudly.

Usage: staged_upload.py --base URL --token TOKEN
"""

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from http import HTTPStatus

from crownest_api import AuthenticatedClient
from crownest_api.api.events import list_events
from crownest_api.api.evidence import evidence as evidence_api
from crownest_api.api.runs import create_run, get_run, start_run
from crownest_api.api.uploads import (
    begin_transfer,
    complete_transfer,
    get_transfer,
    put_chunk,
)
from crownest_api.models import (
    ArchiveDescriptor,
    ErrorBody,
    EventPage,
    EvidenceBundle,
    RunRecord,
    RunSpec,
    TransferStatus,
)
from crownest_api.types import UNSET, File


def fail(message):
    print(f"staged_upload: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def expect(response, status, kind, what):
    if response.status_code != status:
        fail(f"{what}: expected {int(status)}, got {int(response.status_code)}: {response.content[:500]!r}")
    if kind is not None and not isinstance(response.parsed, kind):
        fail(f"{what}: expected a {kind.__name__}, got {type(response.parsed).__name__}")
    return response.parsed


def archive():
    """A .tar.gz a little over one 8 MiB chunk: main.py and incompressible filler."""
    main = (
        b"import hashlib, json, os\n"
        b"data = open('filler.bin', 'rb').read()\n"
        b"os.makedirs('out', exist_ok=True)\n"
        b"json.dump({'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}, open('out/result.json', 'w'))\n"
        b"print('filler', len(data))\n"
    )
    filler = os.urandom(9 * 1024 * 1024)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in (("main.py", main), ("filler.bin", filler)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), hashlib.sha256(filler).hexdigest()


def content_digest(data):
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    args = ap.parse_args()
    client = AuthenticatedClient(base_url=args.base, token=args.token, timeout=120.0)

    data, filler_sha = archive()
    sha = hashlib.sha256(data).hexdigest()

    spec = RunSpec.from_dict(
        {
            "command": ["python3", "main.py"],
            "backend": "process",
            "artifacts": [{"path": "out/result.json", "required": True}],
            "labels": {"via": "generated-python-client"},
        }
    )
    run = expect(
        create_run.sync_detailed(client=client, body=spec, idempotency_key=f"staged-{sha[:16]}"),
        HTTPStatus.CREATED,
        RunRecord,
        "create",
    )
    if run.status.value != "awaiting_archive":
        fail(f"create: status {run.status}")
    print(f"staged_upload: run {run.id}")

    desc = ArchiveDescriptor(size_bytes=len(data), sha256=sha)
    transfer = expect(
        begin_transfer.sync_detailed(id=run.id, client=client, body=desc),
        HTTPStatus.CREATED,
        TransferStatus,
        "begin transfer",
    )
    size = transfer.chunk_size_bytes
    if size <= 0 or len(data) <= size:
        fail(f"begin transfer: chunk size {size} for {len(data)} bytes is not a chunked upload")
    offsets = list(range(0, len(data), size))

    # A chunk whose bytes do not have the digest sent is refused, and nothing is stored.
    first = data[0:size]
    refused = expect(
        put_chunk.sync_detailed(
            tid=transfer.transfer_id,
            client=client,
            body=File(payload=io.BytesIO(first)),
            offset=0,
            x_chunk_sha_256=hashlib.sha256(b"not these bytes").hexdigest(),
        ),
        HTTPStatus.CONFLICT,
        ErrorBody,
        "chunk with a wrong digest",
    )
    if refused.error.code != "chunk_rejected" or refused.error.reason != "digest_mismatch":
        fail(f"chunk with a wrong digest: {refused.to_dict()}")

    # The chunks, last first (any order), each with its digest.
    for i, offset in enumerate(reversed(offsets)):
        chunk = data[offset : offset + size]
        kwargs = {"content_digest": content_digest(chunk)} if i % 2 == 0 else {
            "x_chunk_sha_256": hashlib.sha256(chunk).hexdigest()
        }
        status = expect(
            put_chunk.sync_detailed(
                tid=transfer.transfer_id,
                client=client,
                body=File(payload=io.BytesIO(chunk)),
                offset=offset,
                **kwargs,
            ),
            HTTPStatus.OK,
            TransferStatus,
            f"chunk at {offset}",
        )
    status = expect(
        get_transfer.sync_detailed(tid=transfer.transfer_id, client=client),
        HTTPStatus.OK,
        TransferStatus,
        "transfer status",
    )
    if not status.complete or status.missing or status.bytes_received != len(data):
        fail(f"transfer status: {status.to_dict()}")
    print(f"staged_upload: {len(offsets)} chunks of {size} bytes sent")

    ready = expect(
        complete_transfer.sync_detailed(tid=transfer.transfer_id, client=client),
        HTTPStatus.OK,
        RunRecord,
        "complete",
    )
    if ready.status.value != "archive_ready":
        fail(f"complete: status {ready.status}")
    expect(start_run.sync_detailed(id=run.id, client=client), HTTPStatus.OK, RunRecord, "start")

    # Follow the events (windows) until the terminal one.
    after, events, deadline = 0, [], time.monotonic() + 120
    while not events or events[-1]["type"] != "terminal":
        if time.monotonic() > deadline:
            fail(f"the run did not end: {events[-3:]}")
        resp = list_events.sync_detailed(id=run.id, client=client, after_seq=after, limit=500)
        page = expect(resp, HTTPStatus.OK, EventPage, "events")
        window = json.loads(resp.content)
        if len(page.events) != len(window["events"]) or page.next_after_seq != window["nextAfterSeq"]:
            fail(f"events: the client read {page.to_dict()} from {window}")
        events.extend(window["events"])
        after = window["nextAfterSeq"]
        if not window["events"]:
            time.sleep(0.2)
    if [e["seq"] for e in events] != list(range(1, len(events) + 1)):
        fail("events: the seqs are not 1..n")
    end = events[-1]
    if end["status"] != "succeeded":
        fail(f"the run ended {end}")
    record = expect(get_run.sync_detailed(id=run.id, client=client), HTTPStatus.OK, RunRecord, "get")
    if record.status.value != "succeeded":
        fail(f"get: status {record.status}")

    # The evidence: the bundle names the archive that was sent in chunks.
    resp = evidence_api.sync_detailed(id=run.id, client=client)
    bundle = expect(resp, HTTPStatus.OK, EvidenceBundle, "evidence")
    raw = json.loads(resp.content)
    if bundle.status.value != "succeeded" or raw["status"] != "succeeded":
        fail(f"evidence: status {bundle.status}")
    if raw["source"]["sha256"] != sha or raw["source"]["sizeBytes"] != len(data):
        fail(f"evidence: source {raw['source']} is not the archive sent ({len(data)} bytes, {sha})")
    if raw["source"].get("upload") != "staged":
        fail(f"evidence: upload {raw['source'].get('upload')}")
    if [a["path"] for a in raw["artifacts"]] != ["out/result.json"]:
        fail(f"evidence: artifacts {raw['artifacts']}")
    if bundle.terminal_event is UNSET and "terminalEvent" in raw:
        fail("evidence: the client lost the terminal event")
    stdout = "".join(e.get("data", "") for e in events if e["type"] == "stdout")
    if f"filler {9 * 1024 * 1024}" not in stdout:
        fail(f"stdout: {stdout!r}")
    print(
        f"staged_upload: ok: run {run.id} succeeded; {len(events)} events; evidence names "
        f"the staged archive {sha[:16]}... and out/result.json (filler {filler_sha[:16]}...)"
    )


if __name__ == "__main__":
    main()
