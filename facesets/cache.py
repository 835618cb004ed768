"""The embedding cache: one source of truth for its schema (docs/cache-format.md).

On disk a cache is
  * ``CACHE`` (e.g. ``work/cache/family.npz``): the compacted base, a plain ``.npz``;
  * ``CACHE.segments/seg-NNNNNNNN.npz``: append-only segments, each holding only the rows of
    one flush (the same schema, fewer rows). ``load_cache`` merges base + segments in order;
    ``compact_cache`` folds the segments into a new base and removes them.
A flush therefore costs O(rows in the flush), never O(size of the cache), and every file is
written atomically (fsync + ``os.replace``): a kill -9 loses at most the flush in progress.

Three tables, each a dict of equal-length numpy columns, and a JSON ``meta`` dict:
  paths  every on-disk location seen: path, sha256 ("" when it could not be hashed), size,
         mtime_ns, error (why it could not be hashed, "" if fine)
  files  one row per unique content (sha256): canonical path, width, height,
         status ("face" | "noface" | "error"), error (the reason when status is error)
  faces  one row per detected face: sha256 + index (the face key is "sha256:index"),
         embedding, bbox, kps, det_score, face_short, blur, pose, pose_method and, when the
         model pack has landmark models, landmark_2d_106 / landmark_3d_68
Merge rules (later segment wins): paths by path, files by sha256; the faces of a sha256 come
whole from the last segment that mentions that sha256 in ``files`` or ``faces``.
Everything loads with ``allow_pickle=False``: strings are fixed-width unicode arrays.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fsutil import FileLock, atomic_write, fsync_dir

SCHEMA_VERSION = 1

# column name -> (dtype, per-row shape); "U" is a unicode string of any width.
# ``None`` in a shape stands for the embedding dimension, taken from meta.
PATH_COLUMNS: dict[str, tuple[str, tuple]] = {
    "path": ("U", ()),
    "sha256": ("U", ()),
    "size": ("int64", ()),
    "mtime_ns": ("int64", ()),
    "error": ("U", ()),
}
FILE_COLUMNS: dict[str, tuple[str, tuple]] = {
    "sha256": ("U", ()),
    "path": ("U", ()),
    "width": ("int32", ()),
    "height": ("int32", ()),
    "status": ("U", ()),
    "error": ("U", ()),
}
FACE_COLUMNS: dict[str, tuple[str, tuple]] = {
    "sha256": ("U", ()),
    "index": ("int32", ()),
    "embedding": ("float32", (None,)),
    "bbox": ("float32", (4,)),
    "kps": ("float32", (5, 2)),
    "det_score": ("float32", ()),
    "face_short": ("float32", ()),
    "blur": ("float32", ()),
    "pose": ("float32", (3,)),          # pitch, yaw, roll in degrees; NaN when unknown
    "pose_method": ("U", ()),           # "3d68" (landmark model), "kps5" (estimated), ""
}
# present only when some face has them; missing rows are NaN
OPTIONAL_FACE_COLUMNS: dict[str, tuple[str, tuple]] = {
    "landmark_2d_106": ("float32", (106, 2)),
    "landmark_3d_68": ("float32", (68, 3)),
}
TABLES = {"paths": PATH_COLUMNS, "files": FILE_COLUMNS, "faces": FACE_COLUMNS}

STATUS_FACE, STATUS_NOFACE, STATUS_ERROR = "face", "noface", "error"
_SEGMENT_RE = re.compile(r"^seg-(\d{8})\.npz$")


class CacheError(RuntimeError):
    """A cache that cannot be used as asked (missing, corrupt, other model...)."""


def _empty_column(dtype: str, shape: tuple, dim: int) -> np.ndarray:
    shape = tuple(dim if s is None else s for s in shape)
    if dtype == "U":
        return np.zeros((0,) + shape, dtype="<U1")
    return np.zeros((0,) + shape, dtype=dtype)


def empty_table(name: str, dim: int = 0) -> dict[str, np.ndarray]:
    return {col: _empty_column(dt, sh, dim) for col, (dt, sh) in TABLES[name].items()}


def table_len(table: dict[str, np.ndarray]) -> int:
    return len(next(iter(table.values()))) if table else 0


def _take(table: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in table.items()}


def _concat(parts: list[dict[str, np.ndarray]], optional: dict | None = None) -> dict[str, np.ndarray]:
    """Concatenate tables; optional columns missing from some parts are NaN-filled there."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    keys = list(parts[0].keys())
    for p in parts[1:]:
        keys += [k for k in p if k not in keys]
    out = {}
    for k in keys:
        cols = []
        for p in parts:
            if k in p:
                cols.append(p[k])
            else:
                dt, sh = (optional or {})[k]
                n = table_len(p)
                cols.append(np.full((n,) + sh, np.nan, dtype=dt))
        out[k] = np.concatenate(cols) if len(cols) > 1 else cols[0]
    return out


def _last_wins(table: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    """Keep the last row of each key value (rows are in segment order)."""
    n = table_len(table)
    if n == 0:
        return table
    rev = table[key][::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    keep = np.sort(n - 1 - first_in_rev)
    return _take(table, keep)


@dataclass
class FaceCache:
    """An in-memory cache: ``meta`` plus the paths, files and faces tables."""

    meta: dict = field(default_factory=dict)
    paths: dict[str, np.ndarray] = field(default_factory=lambda: empty_table("paths"))
    files: dict[str, np.ndarray] = field(default_factory=lambda: empty_table("files"))
    faces: dict[str, np.ndarray] = field(default_factory=lambda: empty_table("faces"))

    # ---- sizes and keys -------------------------------------------------------------
    @property
    def n_faces(self) -> int:
        return table_len(self.faces)

    @property
    def n_files(self) -> int:
        return table_len(self.files)

    @property
    def embedding_dim(self) -> int:
        return int(self.meta.get("embedding_dim") or 0)

    def face_keys(self) -> np.ndarray:
        """Stable key of every face: "sha256:index"."""
        return np.char.add(np.char.add(self.faces["sha256"].astype(str), ":"),
                           self.faces["index"].astype(str))

    def has_column(self, name: str) -> bool:
        return name in self.faces

    # ---- lookups --------------------------------------------------------------------
    def file_row_of_faces(self) -> np.ndarray:
        """Row in ``files`` of each face (-1 if its file row is missing)."""
        return _lookup(self.files["sha256"], self.faces["sha256"])

    def locations(self) -> dict[str, list[str]]:
        """sha256 -> every on-disk path recorded with that content (canonical first)."""
        out: dict[str, list[str]] = {}
        canonical = dict(zip(self.files["sha256"].tolist(), self.files["path"].tolist()))
        for p, s in zip(self.paths["path"].tolist(), self.paths["sha256"].tolist()):
            if s:
                out.setdefault(s, []).append(p)
        for s, paths in out.items():
            c = canonical.get(s)
            if c in paths:
                paths.remove(c)
                paths.insert(0, c)
        return out

    def photo_groups(self) -> np.ndarray:
        """Cannot-link groups: faces of one photo (one sha256) share a group id."""
        _, inv = np.unique(self.faces["sha256"], return_inverse=True)
        return inv.reshape(-1).astype(np.int64)

    def path_index(self) -> dict[str, tuple[int, int, str, str]]:
        """path -> (size, mtime_ns, sha256, error), for skipping unchanged files."""
        p = self.paths
        return {path: (int(size), int(mt), sha, err) for path, size, mt, sha, err in
                zip(p["path"].tolist(), p["size"].tolist(), p["mtime_ns"].tolist(),
                    p["sha256"].tolist(), p["error"].tolist())}

    def counts(self) -> dict[str, int]:
        status = self.files["status"]
        return {"paths": table_len(self.paths), "files": self.n_files,
                "face_files": int(np.sum(status == STATUS_FACE)),
                "noface_files": int(np.sum(status == STATUS_NOFACE)),
                "error_files": int(np.sum(status == STATUS_ERROR))
                + int(np.sum(self.paths["error"] != "")),
                "faces": self.n_faces}


def _lookup(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of each query in ``keys`` (unique), -1 when absent."""
    if len(keys) == 0:
        return np.full(len(queries), -1, dtype=np.int64)
    order = np.argsort(keys)
    pos = np.searchsorted(keys, queries, sorter=order)
    pos = np.clip(pos, 0, len(keys) - 1)
    found = order[pos]
    return np.where(keys[found] == queries, found, -1).astype(np.int64)


# ---- on-disk layout --------------------------------------------------------------------
def segments_dir(cache_path: str | os.PathLike) -> Path:
    return Path(os.fspath(cache_path) + ".segments")


def lock_path(cache_path: str | os.PathLike) -> Path:
    return Path(os.fspath(cache_path) + ".lock")


def cache_lock(cache_path: str | os.PathLike) -> FileLock:
    """The lock that keeps two writers (embed, enrich, merge) off one cache."""
    return FileLock(lock_path(cache_path), what=f"cache {cache_path}")


def list_segments(cache_path: str | os.PathLike) -> list[Path]:
    d = segments_dir(cache_path)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _SEGMENT_RE.match(p.name))


def cache_exists(cache_path: str | os.PathLike) -> bool:
    return Path(cache_path).is_file() or bool(list_segments(cache_path))


def _to_arrays(meta: dict, paths: dict, files: dict, faces: dict) -> dict[str, np.ndarray]:
    arrays = {"meta": np.array(json.dumps(meta, sort_keys=True))}
    for tname, table in (("paths", paths), ("files", files), ("faces", faces)):
        for col, arr in table.items():
            arr = np.asarray(arr)
            if arr.dtype.kind == "O":
                raise TypeError(f"cache column {tname}.{col} is an object array")
            arrays[f"{tname}.{col}"] = arr
    return arrays


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)


def _read_npz(path: Path) -> tuple[dict, dict, dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise CacheError(f"{path}: not a readable face-sets cache ({exc}); restore it from "
                         "a backup or delete it and re-run embed") from None
    if "meta" not in data:
        raise CacheError(f"{path}: not a face-sets cache (no meta); pass the right file")
    meta = json.loads(str(data.pop("meta")))
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise CacheError(f"{path}: cache schema v{meta.get('schema_version')} is newer than "
                         f"this face-sets (v{SCHEMA_VERSION}); upgrade face-sets")
    tables: dict[str, dict] = {"paths": {}, "files": {}, "faces": {}}
    for k, v in data.items():
        tname, _, col = k.partition(".")
        if tname in tables:
            tables[tname][col] = v
    return meta, tables["paths"], tables["files"], tables["faces"]


def load_cache(cache_path: str | os.PathLike, must_exist: bool = True) -> FaceCache:
    """Load base + segments into one FaceCache (the only reader every command uses)."""
    cache_path = Path(cache_path)
    sources = ([cache_path] if cache_path.is_file() else []) + list_segments(cache_path)
    if not sources:
        if must_exist:
            raise CacheError(f"{cache_path}: no such cache; run `sort_faces.py embed SRC "
                             f"{cache_path}` first")
        return FaceCache(meta={"schema_version": SCHEMA_VERSION})
    meta: dict = {}
    paths, files, faces, face_seq, mention_sha, mention_seq = [], [], [], [], [], []
    for seq, src in enumerate(sources):
        m, p, f, fc = _read_npz(src)
        meta.update(m)
        if p:
            paths.append(p)
        if f:
            files.append(f)
            mention_sha.append(f["sha256"])
            mention_seq.append(np.full(table_len(f), seq))
        if fc and table_len(fc):
            faces.append(fc)
            face_seq.append(np.full(table_len(fc), seq))
            mention_sha.append(fc["sha256"])
            mention_seq.append(np.full(table_len(fc), seq))
    dim = int(meta.get("embedding_dim") or 0)
    cache = FaceCache(meta=meta)
    cache.paths = _last_wins(_concat(paths), "path") if paths else empty_table("paths", dim)
    cache.files = _last_wins(_concat(files), "sha256") if files else empty_table("files", dim)
    if faces:
        all_faces = _concat(faces, OPTIONAL_FACE_COLUMNS)
        seq = np.concatenate(face_seq)
        # the faces of a sha256 come from the last source that mentions it
        shas = np.concatenate(mention_sha)
        seqs = np.concatenate(mention_seq)
        order = np.lexsort((seqs, shas))
        last = np.r_[shas[order][1:] != shas[order][:-1], True]
        latest = dict(zip(shas[order][last].tolist(), seqs[order][last].tolist()))
        want = np.fromiter((latest[s] for s in all_faces["sha256"].tolist()),
                           dtype=np.int64, count=len(seq))
        cache.faces = _take(all_faces, seq == want)
    else:
        cache.faces = empty_table("faces", dim)
    return cache


def save_cache(cache: FaceCache, cache_path: str | os.PathLike) -> None:
    """Write ``cache`` whole as the base file, atomically (used by compaction)."""
    meta = dict(cache.meta, schema_version=SCHEMA_VERSION,
                saved=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_npz(Path(cache_path), _to_arrays(meta, cache.paths, cache.files, cache.faces))


def compact_cache(cache_path: str | os.PathLike) -> int:
    """Fold all segments into the base file, then remove them. Returns segments folded.

    Crash-safe: the new base replaces the old atomically before any segment is removed; a
    segment left behind by a crash holds rows the base already has, and re-merging them
    changes nothing.
    """
    segs = list_segments(cache_path)
    if not segs:
        return 0
    cache = load_cache(cache_path)
    save_cache(cache, cache_path)
    for s in segs:
        s.unlink(missing_ok=True)
    fsync_dir(segments_dir(cache_path))
    return len(segs)


class SegmentWriter:
    """Appends rows to a cache as new segment files (the flush of embed, enrich, merge)."""

    def __init__(self, cache_path: str | os.PathLike, meta: dict):
        self.cache_path = Path(cache_path)
        self.meta = dict(meta, schema_version=SCHEMA_VERSION)
        self.dim = int(self.meta.get("embedding_dim") or 0)
        self.pending: dict[str, list[dict]] = {"paths": [], "files": [], "faces": []}
        d = segments_dir(self.cache_path)
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob(".seg-*.tmp"):  # temp files of a writer killed mid-flush
            stale.unlink(missing_ok=True)
        existing = list_segments(self.cache_path)
        self.next_seq = (int(_SEGMENT_RE.match(existing[-1].name).group(1)) + 1) if existing else 1
        self.flushes = 0

    def add(self, table: str, **row) -> None:
        self.pending[table].append(row)

    def pending_count(self) -> int:
        return sum(len(v) for v in self.pending.values())

    def _table(self, name: str, rows: list[dict]) -> dict[str, np.ndarray]:
        if not rows:
            return {}
        cols = dict(TABLES[name])
        if name == "faces":
            for opt, spec in OPTIONAL_FACE_COLUMNS.items():
                if any(r.get(opt) is not None for r in rows):
                    cols[opt] = spec
        out = {}
        for col, (dt, sh) in cols.items():
            shape = tuple(self.dim if s is None else s for s in sh)
            if dt == "U":
                out[col] = np.array([str(r.get(col, "")) for r in rows], dtype=str).reshape(-1)
                if out[col].dtype.kind != "U":
                    out[col] = out[col].astype("<U1")
            else:
                fill = np.nan if dt.startswith("float") else 0
                vals = []
                for r in rows:
                    v = r.get(col)
                    vals.append(np.full(shape, fill, dtype=dt) if v is None
                                else np.asarray(v, dtype=dt).reshape(shape))
                out[col] = np.stack(vals) if vals else np.zeros((0,) + shape, dtype=dt)
        return out

    def flush(self, meta_update: dict | None = None) -> Path | None:
        """Write pending rows (and any meta change) as one new segment; O(pending rows)."""
        if meta_update:
            self.meta.update(meta_update)
        if not self.pending_count() and not meta_update:
            return None
        tables = {t: self._table(t, rows) for t, rows in self.pending.items()}
        seg = segments_dir(self.cache_path) / f"seg-{self.next_seq:08d}.npz"
        _write_npz(seg, _to_arrays(self.meta, tables["paths"], tables["files"], tables["faces"]))
        self.next_seq += 1
        self.flushes += 1
        self.pending = {"paths": [], "files": [], "faces": []}
        return seg


def update_meta(cache_path: str | os.PathLike, **changes) -> None:
    """Record meta changes (e.g. calibrated thresholds) as a segment, under the cache lock."""
    with cache_lock(cache_path):
        cache = load_cache(cache_path)
        SegmentWriter(cache_path, cache.meta).flush(meta_update=changes)
        compact_cache(cache_path)
