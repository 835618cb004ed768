"""The state of an ``immich stage`` run: what every asset came to (docs/immich-format.md).

``<root>/.immich/state.jsonl``, JSON Lines, append-only (one fsync'd line per finished
asset, so a kill -9 loses nothing already recorded and a half-written last line is cut off
by the next run). The first line is the header::

    {"format": "face-sets/immich-state", "version": 1, "server": "http://host:2283",
     "user": "LABEL", "cache": "/abs/cache.npz", "created": "..."}

then one record per asset outcome (a later record of an asset wins)::

    {"asset": "<id>", "status": "staged", "path": "2023/IMG_1.jpg", "sha256": "...",
     "size": 123, "faces": 2, "max_face": 211.5}

status: ``staged`` (original saved under ``path``, relative to the root), ``alias`` (same
bytes as the staged ``path`` of another asset of this run), ``known`` (bytes already in the
cache), ``noface`` (Immich found no face), ``small`` (no face's short edge reaches the gate),
``thumb`` (an Immich thumbnail indexed as a photo, ``--skip-thumbs``), ``unsupported`` (a
format embed cannot read, by the original's extension: RAW, video...) or ``error`` (failed
after retries: ``reason``; retried by the next run, so not done). Everything read back is
validated; a path never leads outside the root. The API key is never part of it.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from .manifest import MANIFEST_FILE, REFINE_MANIFEST_FILE, ManifestError, safe_member_path
from .queue import JsonlAppender, QueueError, read_jsonl

STATE_FORMAT = "face-sets/immich-state"
STATE_VERSION = 1
STATE_DIR = ".immich"              # under the per-user root; hidden: embed never scans it
STATE_FILE = "state.jsonl"
PARTIAL_DIR = "partial"            # <root>/.immich/partial/: downloads in progress
FINALIZE_FILE = "finalize.json"    # <root>/.immich/finalize.json: finished finalize steps
QUEUE_FILE = "queue.json"          # <root>/.immich/queue.json: the embed queue stage writes
RESULTS_DIR = "results"            # <root>/.immich/results/: the embed worker's results
# finalize's output folder OUT (run's layout): cluster's raw clusters, refine's facesets and
# the swap-ready library, each with its manifest
RAW_DIR = "raw"                    # OUT/raw/manifest.json (cluster, extend)
REFINED_DIR = "facesets"           # OUT/facesets/refine_manifest.json (refine)
SWAP_READY_DIR = "swap_ready"      # OUT/swap_ready/manifest.json (export-swap, discover)


def raw_manifest(out: str | Path) -> Path:
    return Path(out) / RAW_DIR / MANIFEST_FILE


def refine_manifest(out: str | Path) -> Path:
    return Path(out) / REFINED_DIR / REFINE_MANIFEST_FILE

STAGED, ALIAS, KNOWN, NOFACE, SMALL, THUMB, UNSUPPORTED, ERROR = (
    "staged", "alias", "known", "noface", "small", "thumb", "unsupported", "error")
STATUSES = (STAGED, ALIAS, KNOWN, NOFACE, SMALL, THUMB, UNSUPPORTED, ERROR)
DONE = frozenset(STATUSES) - {ERROR}
_ASSET_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class StateError(ManifestError):
    """A state file that cannot be trusted: one line naming the file and the field."""


def check_label(label: str) -> str:
    """A user label names a folder: letters, digits, ``._-``, up to 64 characters."""
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise ValueError(f"--user {label!r}: use letters, digits, '.', '_' or '-' (it names "
                         "the folder the originals go to)")
    return label


def state_path(root: str | Path) -> Path:
    return Path(root) / STATE_DIR / STATE_FILE


def header(server: str, user: str, cache: str) -> dict:
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "server": server, "user": user,
            "cache": cache, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def record(asset: str, status: str, **fields) -> dict:
    if status not in STATUSES:
        raise ValueError(f"unknown asset status {status!r}")
    return {"asset": asset, "status": status, **fields}


def _check_header(h: dict, where: Path) -> dict:
    if h.get("format") != STATE_FORMAT:
        raise StateError(f"{where}: line 1 is not a face-sets Immich state header (format)")
    v = h.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise StateError(f"{where}: header field version is not a positive integer")
    if v > STATE_VERSION:
        raise StateError(f"{where}: version {v} is newer than this face-sets reads "
                         f"({STATE_VERSION}); update face-sets")
    for k in ("server", "user", "cache"):
        if not isinstance(h.get(k), str) or not h[k]:
            raise StateError(f"{where}: header field {k} is missing or not text")
    if "://" not in h["server"] or "@" in h["server"]:
        raise StateError(f"{where}: header field server is not a plain server URL")
    return h


def _check_record(r: dict, n: int, root: Path, where: Path) -> dict:
    def bad(field: str, what: str) -> StateError:
        if not n:
            return StateError(f"{where}: record to write: field {field} {what}")
        # a record only says what became of one asset: without it the asset is done again
        return StateError(f"{where}: line {n}: field {field} {what}; delete that line and "
                          "the next stage does that asset again")

    if not isinstance(r.get("asset"), str) or not _ASSET_ID.fullmatch(r["asset"]):
        raise bad("asset", "is not an Immich asset id")
    status = r.get("status")
    if status not in STATUSES:
        raise bad("status", f"is not one of {', '.join(STATUSES)}")
    if status in (STAGED, ALIAS):
        try:
            safe_member_path(root, r.get("path"), f"line {n}: field path", where)
        except ManifestError as exc:
            raise StateError(str(exc).replace("restore the file or re-run the step that "
                                              "writes it", "move the state away and stage "
                                              "again")) from None
        if r["path"].split("/")[0] == STATE_DIR:
            raise bad("path", "points into the state folder")
    if status in (STAGED, ALIAS, KNOWN):
        if not isinstance(r.get("sha256"), str) or not _SHA256.fullmatch(r["sha256"]):
            raise bad("sha256", "is not a sha256 hex digest")
    for k in ("size", "faces"):
        if k in r and (not isinstance(r[k], int) or isinstance(r[k], bool)
                       or not 0 <= r[k] < 1 << 63):
            raise bad(k, "is not a non-negative 64-bit integer")
    if "max_face" in r and (not isinstance(r["max_face"], (int, float))
                            or isinstance(r["max_face"], bool) or not r["max_face"] >= 0
                            or not math.isfinite(r["max_face"])):
        raise bad("max_face", "is not a finite non-negative number")
    for k in ("reason", "original_path"):
        if k in r and not isinstance(r[k], str):
            raise bad(k, "is not text")
    return r


def load_state(root: str | Path) -> tuple[dict | None, dict[str, dict]]:
    """(header, latest record per asset) of the state under ``root``; (None, {}) when there
    is none yet. A half-written last line (a kill) is ignored; anything else wrong is one
    StateError line naming the file and the field."""
    root = Path(root)
    path = state_path(root)
    if not path.exists():
        return None, {}
    try:
        lines, _ = read_jsonl(path, strict=True)
    except QueueError as exc:
        raise StateError(str(exc).replace("re-run the worker into a fresh results file",
                                          "move the state file away and stage again")) from None
    if not lines:
        return None, {}
    head = _check_header(lines[0], path)
    latest: dict[str, dict] = {}
    for n, r in enumerate(lines[1:], 2):
        latest[_check_record(r, n, root, path)["asset"]] = r
    return head, latest


class StateWriter:
    """Appends records, each made durable at once (one fsync per finished asset). A record is
    checked as ``load_state`` will read it back before it is written, and written without
    NaN or infinity: a line this writer takes, the reader takes too."""

    def __init__(self, root: str | Path, head: dict | None = None):
        self.root = Path(root)
        self.path = state_path(root)
        self.out = JsonlAppender(self.path)
        if head is not None and (not self.path.exists() or self.path.stat().st_size == 0):
            self._add(_check_header(head, self.path))

    def _add(self, rec: dict) -> None:
        try:
            json.dumps(rec, allow_nan=False)
        except ValueError:
            raise StateError(f"{self.path}: refusing to write a record of asset "
                             f"{rec.get('asset')!r} holding NaN or infinity") from None
        self.out.add(rec)
        self.out.flush()

    def write(self, rec: dict) -> None:
        self._add(_check_record(rec, 0, self.root, self.path))


# ---- finalize's finished steps ------------------------------------------------------------
FINALIZE_FORMAT = "face-sets/immich-finalize"
FINALIZE_VERSION = 1


def finalize_path(root: str | Path) -> Path:
    return Path(root) / STATE_DIR / FINALIZE_FILE


def load_finalize(root: str | Path, steps: tuple[str, ...]) -> list[str]:
    """The finalize steps finished in the current run (in order; [] when none is under way).
    A finished run of other steps (with / without a worker) counts as none under way; an
    unfinished one is an error (finish it the same way first)."""
    from ..io.fsutil import read_json

    path = finalize_path(root)
    if not path.exists():
        return []
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: not readable JSON ({type(exc).__name__}); delete it to "
                         "start finalize from its first step") from None
    if not isinstance(data, dict) or data.get("format") != FINALIZE_FORMAT:
        raise StateError(f"{path}: field format is not {FINALIZE_FORMAT}")
    if data.get("version") != FINALIZE_VERSION:
        raise StateError(f"{path}: field version {data.get('version')!r} is not "
                         f"{FINALIZE_VERSION}")
    recorded, done = data.get("steps"), data.get("done")
    if not isinstance(recorded, list) or not all(isinstance(s, str) for s in recorded):
        raise StateError(f"{path}: field steps is not a list of step names")
    if not isinstance(done, list) or done != recorded[:len(done)]:
        raise StateError(f"{path}: field done is not a prefix of its steps")
    if recorded != list(steps):
        if len(done) == len(recorded):
            return []
        raise StateError(f"{path}: an unfinished finalize with the steps "
                         f"{', '.join(recorded)} (done: {', '.join(done) or 'none'}); finish "
                         "it the same way (with or without --worker-python) first")
    return done


def write_finalize(root: str | Path, done: list[str], steps: tuple[str, ...]) -> None:
    from ..io.fsutil import atomic_write_json

    atomic_write_json(finalize_path(root), {"format": FINALIZE_FORMAT,
                                            "version": FINALIZE_VERSION, "steps": list(steps),
                                            "done": list(done),
                                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
