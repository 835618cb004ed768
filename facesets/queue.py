"""The worker queue format and result logs: one source of truth (docs/queue-format.md).

A queue is one JSON file, written atomically by the WSL side::

    {"format": "face-sets/queue", "version": 1, "kind": "embed" | "multiface",
     "created": "...", "wsl_distro": "Ubuntu" | null, "host": "...",
     "params": {...what the worker must use: model, det_size...},
     "items": [{"id": "...", "path": "/abs/wsl/path", ...kind-specific fields}]}

Results are written by the worker beside nothing else and are resumable by construction:
  * scoring-type kinds append JSON Lines (one record per item, carrying the queue's ``id``
    and ``path``); a half-written last line from a kill is ignored by ``read_jsonl`` and cut
    off by ``JsonlAppender`` before it appends again;
  * the embed kind writes cache segments (facesets.cache.SegmentWriter) under
    ``OUT/results.npz.segments/``, so merging is an import.
Per-item failures (missing file, changed since staging) go to ``OUT/failures.jsonl`` and are
retried by the next run. Queues come from another machine: everything is validated.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Iterable

from .fsutil import atomic_write_json, fsync_dir, read_json

QUEUE_FORMAT = "face-sets/queue"
QUEUE_VERSION = 1
KIND_EMBED = "embed"
KIND_MULTIFACE = "multiface"
KINDS = {KIND_EMBED, KIND_MULTIFACE}

RESULTS_CACHE = "results.npz"      # OUT/results.npz(.segments/) of the embed worker
FAILURES_LOG = "failures.jsonl"    # OUT/failures.jsonl: items to retry, with the reason


class QueueError(ValueError):
    """A queue file that is missing, malformed, of another kind or a newer version."""


def new_queue(kind: str, params: dict, items: list[dict]) -> dict:
    """A queue document; ``wsl_distro`` is recorded when staged inside WSL."""
    if kind not in KINDS:
        raise QueueError(f"unknown queue kind {kind!r}")
    return {"format": QUEUE_FORMAT, "version": QUEUE_VERSION, "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wsl_distro": os.environ.get("WSL_DISTRO_NAME") or None,
            "host": socket.gethostname(), "params": dict(params), "items": list(items)}


def write_queue(path: str | os.PathLike, queue: dict) -> None:
    validate_queue(queue, str(path))
    atomic_write_json(path, queue)


def validate_queue(data, where: str, kind: str | None = None) -> dict:
    """Check a queue document read from disk; raise QueueError naming the problem."""
    def bad(why: str) -> QueueError:
        return QueueError(f"{where}: {why}; re-stage the queue")

    if not isinstance(data, dict) or data.get("format") != QUEUE_FORMAT:
        raise bad("not a face-sets queue")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise bad("queue has no valid version")
    if version > QUEUE_VERSION:
        raise QueueError(f"{where}: queue v{version} is newer than this worker "
                         f"(v{QUEUE_VERSION}); update face-sets on the worker side")
    if data.get("kind") not in KINDS:
        raise bad(f"unknown queue kind {data.get('kind')!r}")
    if kind and data["kind"] != kind:
        raise QueueError(f"{where}: a {data['kind']} queue, not a {kind} queue; pass it to "
                         f"the {data['kind']} worker")
    if not isinstance(data.get("params"), dict):
        raise bad("params missing")
    distro = data.get("wsl_distro")
    if distro is not None and (not isinstance(distro, str) or any(c in distro for c in "\\/")):
        raise bad(f"bad wsl_distro {distro!r}")
    items = data.get("items")
    if not isinstance(items, list):
        raise bad("items missing")
    seen = set()
    for n, it in enumerate(items):
        if not (isinstance(it, dict) and isinstance(it.get("id"), str) and it["id"]
                and isinstance(it.get("path"), str) and it["path"]):
            raise bad(f"item {n} needs a non-empty string id and path")
        if "\x00" in it["path"]:
            raise bad(f"item {it['id']} has a NUL in its path")
        if it["id"] in seen:
            raise bad(f"item id {it['id']!r} appears twice")
        seen.add(it["id"])
    return data


def load_queue(path: str | os.PathLike, kind: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such queue; stage it first")
    return validate_queue(read_json(path), str(path), kind)


# ---- JSON Lines results --------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], int]:
    """Records of a JSON Lines file, and how many lines were unreadable (ignored).

    A kill can leave a half-written last line; any line that is not a JSON object is skipped.
    A missing file has no records.
    """
    records, bad = [], 0
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    bad += 1
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
                else:
                    bad += 1
    except FileNotFoundError:
        pass
    return records, bad


def _cut_partial_tail(path: Path) -> None:
    """Truncate a half-written last line so appended records start on a line of their own."""
    try:
        with open(path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            pos = size
            while pos > 0:
                step = min(65536, pos)
                fh.seek(pos - step)
                chunk = fh.read(step)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    pos = pos - step + nl + 1
                    break
                pos -= step
            fh.truncate(pos)
            fh.flush()
            os.fsync(fh.fileno())
    except FileNotFoundError:
        pass


class JsonlAppender:
    """Buffered, append-only JSON Lines writer; ``flush`` makes buffered records durable."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _cut_partial_tail(self.path)
        self.pending: list[str] = []

    def add(self, record: dict) -> None:
        self.pending.append(json.dumps(record, ensure_ascii=False))

    def extend(self, records: Iterable[dict]) -> None:
        for r in records:
            self.add(r)

    def flush(self) -> None:
        if not self.pending:
            return
        new = not self.path.exists()
        with open(self.path, "ab") as fh:
            fh.write(("\n".join(self.pending) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.path.parent)
        self.pending = []


def latest_by_id(records: Iterable[dict]) -> dict[str, dict]:
    """The last record of each item id (a retried item's newer outcome wins)."""
    out: dict[str, dict] = {}
    for r in records:
        if isinstance(r.get("id"), str):
            out[r["id"]] = r
    return out
