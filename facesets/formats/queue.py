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
  * the embed kind writes cache segments (facesets.formats.cache.SegmentWriter) under
    ``OUT/results.npz.segments/``, so merging is an import.
Per-item failures (missing file, changed since staging) go to ``OUT/failures.jsonl`` and are
retried by the next run. Queues come from another machine: everything is validated.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import re
import socket
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from ..io.fsutil import (DISK_FULL_ERRNOS, atomic_write_json, disk_full, fsync_dir, read_json,
                         write_point)

QUEUE_FORMAT = "face-sets/queue"
QUEUE_VERSION = 1
KIND_EMBED = "embed"
KIND_MULTIFACE = "multiface"
KIND_VIDEO = "video"      # one item per shot of a video (facesets/steps/video.py)
KIND_OCCLUSION = "occlusion"       # face PNGs of an export to score (occlusion stage)
KINDS = {KIND_EMBED, KIND_MULTIFACE, KIND_VIDEO, KIND_OCCLUSION}

RESULTS_CACHE = "results.npz"      # OUT/results.npz(.segments/) of the embed worker
FAILURES_LOG = "failures.jsonl"    # OUT/failures.jsonl: items to retry, with the reason
MAX_DET_SIZE = 4096                # detector input side; larger is a typo or an attack
_SHA256 = re.compile(r"[0-9a-f]{64}")   # fullmatch: "$" would let a trailing newline in


class QueueError(ValueError):
    """A queue file that is missing, malformed, of another kind or a newer version."""


def new_queue(kind: str, params: dict, items: list[dict]) -> dict:
    """A queue document; ``wsl_distro`` is recorded when staged inside WSL."""
    if kind not in KINDS:
        raise QueueError(f"unknown queue kind {_show(kind)}")
    return {"format": QUEUE_FORMAT, "version": QUEUE_VERSION, "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wsl_distro": os.environ.get("WSL_DISTRO_NAME") or None,
            "host": socket.gethostname(), "params": dict(params), "items": list(items)}


def write_queue(path: str | os.PathLike, queue: dict) -> None:
    validate_queue(queue, str(path))
    atomic_write_json(path, queue)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value) -> str:
    """A value read from an untrusted file, quoted and cut short enough for one line."""
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + f"...({len(text)} chars)"


def _path_problem(path) -> str:
    """Why ``path`` is not a usable queue path ('' when it is): absolute, no '..', no NUL."""
    if not isinstance(path, str) or not path:
        return "is not a non-empty string"
    if "\x00" in path:
        return "has a NUL character"
    if not path.startswith("/"):
        return "is not an absolute path"
    if ".." in path.split("/"):
        return "has a '..' component"
    return ""


def is_under(path: str, root: str) -> bool:
    """Whether the (checked, absolute) ``path`` lies inside folder ``root`` or is ``root``
    itself (embed SRC may be a single photo)."""
    root, path = posixpath.normpath(root), posixpath.normpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Check:
    """Field checks of one queue document; each failure is one line naming file and field."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, why: str) -> QueueError:
        return QueueError(f"{self.where}: {field} {why}; re-stage the queue")

    def string(self, value, field: str, optional: bool = False) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            raise self.fail(field, f"{_show(value)} is not a non-empty string")

    def integer(self, value, field: str, low: int | None = None, high: int | None = None,
                optional: bool = False) -> None:
        if value is None and optional:
            return
        if not _is_int(value) or (low is not None and value < low) \
                or (high is not None and value > high):
            span = f" in {low}..{high}" if high is not None else \
                (f" >= {low}" if low is not None else "")
            raise self.fail(field, f"{_show(value)} is not an integer{span}")

    def path(self, value, field: str, roots: list[str] | None = None,
             optional: bool = False) -> None:
        if value is None and optional:
            return
        why = _path_problem(value)
        if why:
            raise self.fail(field, f"{_show(value)} {why}")
        if roots is not None and not any(is_under(value, r) for r in roots):
            raise self.fail(field, f"{_show(value)} is not under a staged root "
                                   f"({', '.join(map(repr, roots))})")

    def sha256(self, value, field: str) -> None:
        if not (isinstance(value, str) and _SHA256.fullmatch(value)):
            raise self.fail(field, f"{_show(value)} is not a sha256 (64 lowercase hex digits)")


def _plain_name(name) -> bool:
    return isinstance(name, str) and bool(name) and name not in (".", "..") \
        and not any(c in name for c in "/\\\x00")


def staged_roots(queue: dict) -> list[str]:
    """The folders a queue's items must lie in: the staged SRC (embed), the export (multiface)."""
    key = "src" if queue["kind"] in (KIND_EMBED, KIND_VIDEO) else "export"
    return [posixpath.normpath(queue["params"][key])]


def _check_params(kind: str, params: dict, c: _Check) -> None:
    c.string(params.get("model"), "params.model", optional=True)
    c.path(params.get("model_root"), "params.model_root", optional=True)
    c.integer(params.get("det_size"), "params.det_size", 32, MAX_DET_SIZE, optional=True)
    if kind == KIND_VIDEO:
        c.path(params.get("src"), "params.src")
        fps = params.get("fps")
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not 0 < fps <= 120:
            raise c.fail("params.fps", f"{_show(fps)} is not a number in 0..120")
    elif kind == KIND_EMBED:
        c.string(params.get("model_id"), "params.model_id", optional=True)
        c.integer(params.get("max_pixels"), "params.max_pixels", 1, optional=True)
        c.path(params.get("src"), "params.src")
        c.path(params.get("cache"), "params.cache", optional=True)
    else:
        c.path(params.get("export"), "params.export")
        c.string(params.get("export_run"), "params.export_run", optional=True)


def _check_embed_item(it: dict, field: str, roots: list[str], c: _Check) -> None:
    c.sha256(it.get("sha256"), f"{field}.sha256")
    if it["id"] != it["sha256"]:
        raise c.fail(f"{field}.id", f"{_show(it['id'])} is not the item's sha256")
    c.integer(it.get("size"), f"{field}.size", 0)
    c.integer(it.get("mtime_ns"), f"{field}.mtime_ns")
    aliases = it.get("aliases", [])
    if not isinstance(aliases, list):
        raise c.fail(f"{field}.aliases", "is not a list")
    for a, alias in enumerate(aliases):
        af = f"{field}.aliases[{a}]"
        if not isinstance(alias, dict):
            raise c.fail(af, "is not an object")
        c.path(alias.get("path"), af, roots)
        c.integer(alias.get("size"), f"{af}.size", 0)
        c.integer(alias.get("mtime_ns"), f"{af}.mtime_ns")


def _check_multiface_item(it: dict, field: str, roots: list[str], c: _Check) -> None:
    faceset, file = it.get("faceset"), it.get("file")
    if not _plain_name(faceset):
        raise c.fail(f"{field}.faceset", f"{_show(faceset)} is not a plain folder name")
    parts = file.split("/") if isinstance(file, str) else []
    if len(parts) != 2 or parts[0] != "faces" or not _plain_name(parts[1]) \
            or not parts[1].lower().endswith(".png"):
        raise c.fail(f"{field}.file", f"{_show(file)} is not faces/<name>.png")
    if it["id"] != f"{faceset}/{file}":
        raise c.fail(f"{field}.id", f"{_show(it['id'])} is not <faceset>/<file>")
    if posixpath.normpath(it["path"]) != posixpath.join(roots[0], faceset, file):
        raise c.fail(f"{field}.path", f"{_show(it['path'])} is not <export>/{faceset}/{file}")
    c.integer(it.get("size"), f"{field}.size", 0)
    c.sha256(it.get("sha256"), f"{field}.sha256")
    if not isinstance(it.get("key", ""), str):
        raise c.fail(f"{field}.key", f"{_show(it.get('key'))} is not a string")


def _check_video_item(it: dict, field: str, roots: list[str], c: _Check) -> None:
    c.integer(it.get("size"), f"{field}.size", 0)
    c.integer(it.get("shot"), f"{field}.shot", 0)
    key = it.get("key")
    if not _plain_name(key):
        raise c.fail(f"{field}.key", f"{_show(key)} is not a plain name")
    if it["id"] != f"{key}#{it['shot']}":
        raise c.fail(f"{field}.id", f"{_show(it['id'])} is not <key>#<shot>")
    for k in ("start", "end"):
        v = it.get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                or v < 0:
            raise c.fail(f"{field}.{k}", f"{_show(v)} is not a time in seconds")
    if it["end"] < it["start"]:
        raise c.fail(f"{field}.end", "is before start")


def validate_queue(data, where: str, kind: str | None = None) -> dict:
    """Check a queue document read from disk; raise QueueError naming the file and field.

    Every item (and alias) must be an absolute path, without '..', inside the folder the
    queue was staged from (``params.src`` for embed, ``params.export`` for multiface).
    """
    c = _Check(where)
    if not isinstance(data, dict) or data.get("format") != QUEUE_FORMAT:
        raise c.fail("format", "is not face-sets/queue (not a face-sets queue)")
    version = data.get("version")
    if not _is_int(version) or version < 1:
        raise c.fail("version", f"{_show(version)} is not a valid version")
    if version > QUEUE_VERSION:
        raise QueueError(f"{where}: queue v{version} is newer than this worker "
                         f"(v{QUEUE_VERSION}); update face-sets on the worker side")
    if data.get("kind") not in KINDS:
        raise c.fail("kind", f"{_show(data.get('kind'))} is not a known queue kind")
    if kind and data["kind"] != kind:
        raise QueueError(f"{where}: a {data['kind']} queue, not a {kind} queue; pass it to "
                         f"the {data['kind']} worker")
    params = data.get("params")
    if not isinstance(params, dict):
        raise c.fail("params", "is missing or not an object")
    _check_params(data["kind"], params, c)
    distro = data.get("wsl_distro")
    if distro is not None and (not isinstance(distro, str) or not _plain_name(distro)):
        raise c.fail("wsl_distro", f"{_show(distro)} is not a distro name")
    items = data.get("items")
    if not isinstance(items, list):
        raise c.fail("items", "is missing or not a list")
    roots = staged_roots(data)
    # an occlusion item is a multiface item: one face PNG of the export, with its sha256
    check_item = {KIND_EMBED: _check_embed_item, KIND_VIDEO: _check_video_item}.get(
        data["kind"], _check_multiface_item)
    seen = set()
    for n, it in enumerate(items):
        field = f"items[{n}]"
        if not isinstance(it, dict):
            raise c.fail(field, "is not an object")
        c.string(it.get("id"), f"{field}.id")
        c.path(it.get("path"), f"{field}.path", roots)
        if it["id"] in seen:
            raise c.fail(f"{field}.id", f"{_show(it['id'])} appears twice")
        seen.add(it["id"])
        check_item(it, field, roots, c)
    return data


def load_queue(path: str | os.PathLike, kind: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such queue; stage it first")
    try:
        data = read_json(path)
    except UnicodeDecodeError:
        raise QueueError(f"{path}: not UTF-8 JSON; re-stage the queue") from None
    return validate_queue(data, str(path), kind)


# ---- worker results ------------------------------------------------------------------------
QUEUE_COPY = "queue.json"   # OUT/queue.json: the queue an embed worker's results answer
MAX_EMBEDDING_DIM = 4096
# float face columns that are never NaN (the others are NaN when unknown, never infinite)
_FINITE_FACE_COLUMNS = ("embedding", "bbox", "kps", "det_score", "face_short", "blur")
_FILE_STATUSES = ("face", "noface", "error")


def _column_problem(arr, dtype: str, shape: tuple, n: int) -> str:
    if not isinstance(arr, np.ndarray):
        return "is missing"
    kind = {"U": "U"}.get(dtype, "i" if dtype.startswith("int") else "f")
    if arr.dtype.kind != kind:
        return f"holds {arr.dtype} values, not {dtype}"
    if arr.shape != (n,) + shape:
        return f"has shape {arr.shape}, not {(n,) + shape}"
    return ""


def validate_embed_results(results, queue: dict, dim: int, where: str) -> None:
    """Check every row of an embed worker's results (a loaded ``cache.FaceCache``) against
    the queue they answer, before anything of them is written to a cache.

    Columns of the cache schema with their dtypes and shapes (the embedding ``dim`` wide, the
    receiving cache's), finite numbers, sha256 keys of the queue's items, paths that are the
    item's own path or one of its aliases, faces of photos the results hold. Raises
    QueueError naming the file and the field.
    """
    from .cache import OPTIONAL_FACE_COLUMNS, TABLES, table_len

    def bad(field: str, why: str) -> QueueError:
        return QueueError(f"{where}: {field} {why}; re-run the worker into an empty folder")

    for k in ("model", "model_id"):
        if not isinstance(results.meta.get(k), str) or not results.meta[k]:
            raise bad(f"meta.{k}", f"{_show(results.meta.get(k))} is not a non-empty string")
    det = results.meta.get("det_size")
    if det is not None and not (_is_int(det) and 32 <= det <= MAX_DET_SIZE):
        raise bad("meta.det_size", f"{_show(det)} is not an integer in 32..{MAX_DET_SIZE}")
    if not isinstance(results.meta.get("has_landmarks", False), bool):
        raise bad("meta.has_landmarks", "is not true or false")
    meta_dim = results.meta.get("embedding_dim")
    if not _is_int(meta_dim) or not 0 < meta_dim <= MAX_EMBEDDING_DIM:
        raise bad("meta.embedding_dim", f"{_show(meta_dim)} is not a positive integer")
    if meta_dim != dim:
        raise bad("meta.embedding_dim", f"{meta_dim} differs from the cache's {dim}")
    for tname, spec in TABLES.items():
        table = getattr(results, tname)
        cols = dict(spec)
        if tname == "faces":
            cols.update({k: v for k, v in OPTIONAL_FACE_COLUMNS.items() if k in table})
        n = table_len(table) if table else 0
        for col, (dtype, shape) in cols.items():
            shape = tuple(dim if s is None else s for s in shape)
            why = _column_problem(table.get(col), dtype, shape, n)
            if why:
                raise bad(f"{tname}.{col}", why)
    items = {it["id"]: it for it in queue["items"]}
    allowed = {it["id"]: {it["path"]} | {a["path"] for a in it.get("aliases", [])}
               for it in queue["items"]}

    def key(tname: str, i: int, sha: str) -> dict:
        if sha not in items:
            raise bad(f"{tname}.sha256[{i}]", f"{_show(sha)} is not an item of the queue")
        return items[sha]

    files, faces, paths = results.files, results.faces, results.paths
    statuses = {}
    for i, (sha, path, status) in enumerate(zip(files["sha256"].tolist(),
                                                files["path"].tolist(),
                                                files["status"].tolist())):
        if path != key("files", i, sha)["path"]:
            raise bad(f"files.path[{i}]", f"{_show(path)} is not the queued path of {sha}")
        if status not in _FILE_STATUSES:
            raise bad(f"files.status[{i}]", f"{_show(status)} is not one of {_FILE_STATUSES}")
        statuses[sha] = status
    for col in ("width", "height"):
        if (files[col] < 0).any():
            raise bad(f"files.{col}[{int(np.argmax(files[col] < 0))}]", "is negative")
    for i, sha in enumerate(faces["sha256"].tolist()):
        key("faces", i, sha)
        if statuses.get(sha) != "face":
            raise bad(f"faces.sha256[{i}]", f"{sha} has no files row of status 'face'")
    if (faces["index"] < 0).any():
        raise bad(f"faces.index[{int(np.argmax(faces['index'] < 0))}]", "is negative")
    for col in [c for c in faces if faces[c].dtype.kind == "f"]:
        ok = np.isfinite(faces[col]) if col in _FINITE_FACE_COLUMNS \
            else ~np.isinf(faces[col])
        if not ok.all():
            row = int(np.argmax(~ok.reshape(len(ok), -1).all(axis=1)))
            raise bad(f"faces.{col}[{row}]", "holds a value that is not a finite number")
    for i, (sha, path) in enumerate(zip(paths["sha256"].tolist(), paths["path"].tolist())):
        key("paths", i, sha)
        if path not in allowed[sha]:
            raise bad(f"paths.path[{i}]", f"{_show(path)} is neither the queued path of {sha} "
                                          "nor one of its aliases")


def _result_records(records: list[dict], queue: dict, where: str):
    """What every worker's JSON Lines results share, checked record by record: ids of the
    queue's items with their queued path, and ``{id, path, error}`` (a string) for an item
    that failed. Yields the other records as (record, its queue item, ``bad(field, why)``:
    the QueueError naming the file, the record and the field)."""
    items = {it["id"]: it for it in queue["items"]}
    for n, rec in enumerate(records):
        def bad(field: str, why: str, n: int = n) -> QueueError:
            return QueueError(f"{where}: record {n + 1} {field} {why}; re-run the worker into "
                              "a fresh results file")

        rid = rec.get("id")
        if not isinstance(rid, str) or rid not in items:
            raise bad("id", f"{_show(rid)} is not an item of the queue")
        if rec.get("path") != items[rid]["path"]:
            raise bad("path", f"{_show(rec.get('path'))} is not the queued path of {rid}")
        if "error" in rec:
            if not isinstance(rec["error"], str):
                raise bad("error", f"{_show(rec['error'])} is not a string")
            continue
        yield rec, items[rid], bad


def validate_multiface_results(records: list[dict], queue: dict, where: str) -> None:
    """Check every record of a multiface worker's JSON Lines results against the queue:
    ``{id, path, faces, scores}`` (faces an integer >= 0, as many finite scores in 0..1) or
    ``{id, path, error}``, ids of the queue's items with their queued path. Raises
    QueueError naming the file, the record and the field."""
    for rec, _, bad in _result_records(records, queue, where):
        faces, scores = rec.get("faces"), rec.get("scores")
        if not _is_int(faces) or faces < 0:
            raise bad("faces", f"{_show(faces)} is not an integer >= 0")
        if not isinstance(scores, list) or len(scores) != faces or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool)
                and math.isfinite(x) and 0 <= x <= 1 for x in scores):
            raise bad("scores", f"is not a list of {faces} detection scores in 0..1")


def validate_occlusion_results(records: list[dict], queue: dict, where: str) -> None:
    """Check every record of an occlusion worker's JSON Lines results against the queue:
    ``{id, path, sha256, scorer, scores: {attribute: probability}}`` (attribute names are
    identifiers, probabilities finite numbers in 0..1) or ``{id, path, error}``; ids of the
    queue's items with their queued path and sha256. Raises QueueError naming the file, the
    record and the field."""
    for rec, item, bad in _result_records(records, queue, where):
        if rec.get("sha256") != item["sha256"]:
            raise bad("sha256", f"{_show(rec.get('sha256'))} is not the queued sha256")
        if not isinstance(rec.get("scorer"), str) or not rec["scorer"]:
            raise bad("scorer", f"{_show(rec.get('scorer'))} is not a non-empty string")
        scores = rec.get("scores")
        if not isinstance(scores, dict) or not scores:
            raise bad("scores", "is not an object of attribute probabilities")
        for k, v in scores.items():
            if not isinstance(k, str) or not k.isidentifier() or len(k) > 64:
                raise bad("scores", f"attribute {_show(k)} is not an identifier")
            if not isinstance(v, (int, float)) or isinstance(v, bool) \
                    or not math.isfinite(v) or not 0 <= v <= 1:
                raise bad(f"scores.{k}", f"{_show(v)} is not a probability in 0..1")


# ---- JSON Lines results --------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, strict: bool = False) -> tuple[list[dict], int]:
    """Records of a JSON Lines file, and how many lines were unreadable (ignored).

    A kill can leave a half-written last line; any line that is not a JSON object is skipped.
    ``strict``: only the last line may be unreadable (a kill); another one is tampering or
    corruption and raises QueueError naming the line. A missing file has no records.
    """
    records, bad, bad_line, line = [], 0, 0, 0
    try:
        with open(path, "rb") as fh:
            for line, raw in enumerate(fh, 1):
                if strict and bad:
                    raise QueueError(f"{path}: line {bad_line} is not a JSON object (only a "
                                     "half-written last line is expected); re-run the "
                                     "worker into a fresh results file")
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except (ValueError, RecursionError):   # not UTF-8, not JSON, too deep
                    rec = None
                if isinstance(rec, dict):
                    records.append(rec)
                else:
                    bad += 1
                    bad_line = line
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
        self.pending.append(json.dumps(record, ensure_ascii=False, allow_nan=False))

    def extend(self, records: Iterable[dict]) -> None:
        for r in records:
            self.add(r)

    def flush(self) -> None:
        if not self.pending:
            return
        # taken before writing: a Ctrl-C during the fsync must not leave them pending, or
        # the flush that follows the interrupt would append them a second time
        lines, self.pending = self.pending, []
        new = not self.path.exists()
        write_point(self.path)
        try:
            with open(self.path, "ab") as fh:
                fh.write(("\n".join(lines) + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:   # a full disk names this file (a write() error names none)
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full(self.path) from None
            raise
        if new:
            fsync_dir(self.path.parent)


def latest_by_id(records: Iterable[dict]) -> dict[str, dict]:
    """The last record of each item id (a retried item's newer outcome wins)."""
    out: dict[str, dict] = {}
    for r in records:
        if isinstance(r.get("id"), str):
            out[r["id"]] = r
    return out
