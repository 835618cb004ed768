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

import glob
import json
import math
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.fsutil import FileLock, atomic_write, fsync_dir
from ..runtime.program import program_name

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
    # the last segment sequence the base file holds (segments up to it are skipped)
    compacted_through: int = 0

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
    arrays = {"meta": np.array(json.dumps(meta, sort_keys=True, allow_nan=False))}
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


# ---- reading: every file is untrusted ------------------------------------------------------
# meta keys the code relies on -> the JSON types allowed (None = absent); other keys are free
_META_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "embedding_dim": (int,), "det_size": (int,),
    "compacted_through": (int,), "model": (str,), "model_id": (str,), "has_landmarks": (bool,),
    "sources": (list,), "thresholds": (dict,), "created": (str,), "saved": (str,),
    "estimate": (dict,),
}
# meta["estimate"]: thresholds estimated from the cache itself (`calibrate --estimate`, or
# `run` for a model without built-in thresholds); see docs/cache-format.md
ESTIMATE_VERSION = 1
_ESTIMATE_TYPES: dict[str, tuple[type, ...]] = {
    "version": (int,), "method": (str,), "how": (str,), "faces": (int,), "made": (str,),
    "thresholds": (dict,), "stats": (dict,),
}
# a cache is a plain (stored) zip: its members inflate to about its size on disk. Anything
# far beyond that is not a file face-sets wrote (e.g. a zip bomb), so it is never read.
_INFLATE_RATIO, _INFLATE_SLACK = 16, 64 << 20
_READ_CHUNK = 16 << 20
_READ_ATTEMPTS = 20           # re-lists when a segment vanishes under a reader (compaction)
# magic bytes -> what the file is, for a clear word when a photo or the like is given as CACHE
_MAGIC = [(b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"),
          (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"),
          (b"MM\x00*", "a TIFF image"), (b"\x93NUMPY", "a single numpy array (.npy)"),
          (b"%PDF", "a PDF document"), (b"\x80", "a Python pickle")]
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_OUR_FIRST_MEMBER = b"meta.npy"   # _to_arrays puts meta first; np.savez keeps that order


class _Vanished(Exception):
    """A file listed a moment ago is gone (a compaction removed it): re-list and retry."""


def _what_is(head: bytes) -> str:
    """A few words saying what a file that is not a zip is, from its first bytes."""
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return "a HEIC image" if head[8:12] in (b"heic", b"heix", b"mif1", b"msf1") \
            else "a video (MP4/MOV)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file"
    return "not a zip (.npz) file"


def _damaged(path: Path, head: bytes, why: str) -> CacheError:
    """The error for a zip that cannot be read: repair advice only when it is provably ours."""
    name_len = int.from_bytes(head[26:28], "little") if len(head) >= 30 else 0
    if head[:4] == b"PK\x03\x04" and head[30:30 + name_len] == _OUR_FIRST_MEMBER:
        return CacheError(f"{path}: damaged face-sets cache ({why}); restore it from a "
                          "backup, or move it aside and re-run embed to rebuild it")
    return CacheError(f"{path}: not a face-sets cache (a zip that cannot be read: {why})")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member, its header checked against its size before any data is read."""
    key = info.filename[:-4]
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise CacheError(f"{path}: {key} is a .npy of version {version}, which face-sets "
                             "never writes")
        if dtype.hasobject:
            raise CacheError(f"{path}: {key} holds Python objects (pickled data), which a "
                             "face-sets cache never does; it was not written by face-sets")
        count = math.prod(shape)
        if count * dtype.itemsize != info.file_size - fh.tell():
            raise CacheError(f"{path}: {key} declares {count * dtype.itemsize} bytes of data "
                             f"(shape {shape}) but holds {info.file_size - fh.tell()}: "
                             "truncated or tampered")
        arr = np.empty(count, dtype=dtype)
        buf = memoryview(arr.view(np.uint8)) if arr.nbytes else memoryview(b"")
        pos = 0
        while pos < len(buf):  # in chunks: no second copy of a big column in memory
            n = fh.readinto(buf[pos:pos + _READ_CHUNK])
            if not n:
                raise EOFError(f"{key} is truncated")
            pos += n
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _read_arrays(path: Path, only_meta: bool = False) -> dict[str, np.ndarray]:
    """The arrays of one cache file, refusing anything that is not a sane plain npz."""
    if path.is_dir():
        raise CacheError(f"{path}: is a folder, not a cache file; did you swap the arguments? "
                         "(CACHE is the .npz file embed writes, e.g. work/cache/family.npz)")
    try:
        fh = open(path, "rb")  # one handle: a compaction may replace the file meanwhile
    except FileNotFoundError:
        raise _Vanished() from None
    except OSError as exc:
        raise CacheError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with fh:
        return _read_zip(path, fh, only_meta)


def _read_zip(path: Path, fh, only_meta: bool) -> dict[str, np.ndarray]:
    try:
        head = fh.read(64)
        size = os.fstat(fh.fileno()).st_size
        fh.seek(0)
    except OSError as exc:
        raise CacheError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not head.startswith(_ZIP_MAGIC):
        raise CacheError(f"{path}: is {_what_is(head)}, not a face-sets cache (.npz); pass "
                         "the cache file that embed wrote")
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            inflated = sum(i.file_size for i in infos)
            if inflated > _INFLATE_RATIO * size + _INFLATE_SLACK:
                raise CacheError(f"{path}: its members would inflate to {inflated / 1e6:,.0f} MB "
                                 f"from a {size / 1e6:,.1f} MB file; not a cache face-sets "
                                 "wrote, not read")
            arrays = {}
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise CacheError(f"{path}: member {info.filename!r} is not a .npy array; "
                                     "not a face-sets cache")
                key = info.filename[:-4]
                if only_meta and key != "meta":
                    continue
                arrays[key] = _read_member(zf, info, path)
    except CacheError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise _damaged(path, head, str(exc) or type(exc).__name__) from None
    return arrays


def _check_meta(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    raw = arrays.pop("meta", None)
    if raw is None:
        raise CacheError(f"{path}: not a face-sets cache (no meta); pass the right file")
    try:
        if raw.dtype.kind != "U" or raw.shape != ():
            raise ValueError(f"a {raw.dtype} array of shape {raw.shape}")
        meta = json.loads(str(raw))
    except ValueError as exc:
        raise CacheError(f"{path}: meta is not JSON text ({exc})") from None
    if not isinstance(meta, dict):
        raise CacheError(f"{path}: meta is a JSON {type(meta).__name__}, expected an object")
    for key, types in _META_TYPES.items():
        v = meta.get(key)
        if v is not None and (not isinstance(v, types) or (bool not in types
                                                           and isinstance(v, bool))):
            raise CacheError(f"{path}: meta.{key} is {json.dumps(v)[:40]}, expected "
                             f"{' or '.join(t.__name__ for t in types)}")
    if (meta.get("embedding_dim") or 0) < 0:
        raise CacheError(f"{path}: meta.embedding_dim is negative")
    for name, value in (meta.get("thresholds") or {}).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CacheError(f"{path}: meta.thresholds.{name} is {json.dumps(value)[:40]}, "
                             "expected a number")
    if meta.get("estimate") is not None:
        check_estimate(meta["estimate"], f"{path}: meta.estimate")
    if int(meta.get("schema_version") or 0) > SCHEMA_VERSION:
        raise CacheError(f"{path}: cache schema v{meta.get('schema_version')} is newer than "
                         f"this face-sets (v{SCHEMA_VERSION}); upgrade face-sets")
    return meta


def check_estimate(est: dict, where: str) -> dict:
    """A recorded estimate (meta["estimate"]) as ``estimate_record`` writes it, else a
    CacheError naming ``where`` + the field: every threshold a cosine distance in (0, 2]."""
    for key, types in _ESTIMATE_TYPES.items():
        v = est.get(key)
        if v is None or not isinstance(v, types) or isinstance(v, bool):
            raise CacheError(f"{where}.{key} is {json.dumps(v)[:40]}, expected "
                             f"{' or '.join(t.__name__ for t in types)}; re-run "
                             "`calibrate --estimate CACHE` to record it again")
    if est["version"] > ESTIMATE_VERSION or est["version"] < 1:
        raise CacheError(f"{where}.version is {est['version']}: this face-sets reads estimate "
                         f"version 1 to {ESTIMATE_VERSION}; upgrade face-sets or re-run "
                         "`calibrate --estimate CACHE`")
    if est["faces"] < 0 or not est["thresholds"]:
        raise CacheError(f"{where}: faces is negative or thresholds is empty")
    for name, value in est["thresholds"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 < value <= 2:
            raise CacheError(f"{where}.thresholds.{name} is {json.dumps(value)[:40]}, expected "
                             "a cosine distance in (0, 2]; re-run `calibrate --estimate CACHE`")
    return est


# meta["calibration"]["scale"]: the library-scale model calibrate --save records
# (core/scale.py); read again by `cluster` / `run` to check a grown library (optional)
_SCALE_TYPES: dict[str, tuple[type, ...]] = {
    "cluster": (float, int), "stranger_p": (float, int), "library_faces": (int,),
    "target_precision": (float, int), "library_precision": (float, int),
}


def calibration_scale(meta: dict, where: str) -> dict | None:
    """meta["calibration"]["scale"] checked for what a later check reads, or None when
    there is none; a CacheError naming ``where`` + the field when it is not as written."""
    cal = meta.get("calibration")
    if cal is None:
        return None
    if not isinstance(cal, dict):
        raise CacheError(f"{where}: meta.calibration is {json.dumps(cal)[:40]}, expected an "
                         "object; re-run `calibrate CACHE TRUTH_ROOT --save`")
    scale = cal.get("scale")
    if scale is None or "stranger_p" not in scale:   # saved before the scale model
        return None
    for key, types in _SCALE_TYPES.items():
        v = scale.get(key) if isinstance(scale, dict) else None
        if v is None or isinstance(v, bool) or not isinstance(v, types) \
                or not math.isfinite(v) or v < 0 or (key != "library_faces" and v > 2):
            raise CacheError(f"{where}: meta.calibration.scale.{key} is "
                             f"{json.dumps(v)[:40]}, expected a number as calibrate writes "
                             "it; re-run `calibrate CACHE TRUTH_ROOT --save`")
    return scale


def estimate_record(method: str, how: str, faces: int, thresholds: dict[str, float],
                    stats: dict) -> dict:
    """The meta["estimate"] body (checked as a reader will check it)."""
    return check_estimate({"version": ESTIMATE_VERSION, "method": method, "how": how,
                           "faces": int(faces), "made": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "thresholds": {k: round(float(v), 4) for k, v in thresholds.items()},
                           "stats": stats}, "estimate")


_KINDS = {"U": "U", "int32": "iu", "int64": "iu", "float32": "f"}
# float columns that must hold numbers: NaN there breaks clustering and cropping
_FINITE = ("embedding", "bbox")


def _check_table(path: Path, tname: str, cols: dict[str, np.ndarray], dim: int) -> dict:
    """Columns of one table against the schema (dtype kind, per-row shape, equal lengths)."""
    schema = dict(TABLES[tname], **(OPTIONAL_FACE_COLUMNS if tname == "faces" else {}))
    for col in cols:
        if col not in schema:
            raise CacheError(f"{path}: {tname}.{col} is not a column of the cache schema "
                             f"v{SCHEMA_VERSION}")
    for col in TABLES[tname]:
        if col not in cols:
            raise CacheError(f"{path}: {tname}.{col} is missing (the file has "
                             f"{', '.join(sorted(cols))})")
    first = next(iter(TABLES[tname]))
    n = None
    out = {}
    for col in [c for c in schema if c in cols]:  # schema order: the row count of `first`
        arr = cols[col]                            # is checked before it is used
        dt, sh = schema[col]
        if arr.dtype.kind not in _KINDS[dt]:
            raise CacheError(f"{path}: {tname}.{col} holds {arr.dtype} values, expected {dt}")
        want = tuple((dim or "D") if s is None else s for s in sh)
        if arr.ndim != 1 + len(sh) or any(
                w != a for w, a in zip(want, arr.shape[1:]) if w != "D"):
            raise CacheError(f"{path}: {tname}.{col} has shape {arr.shape}, expected "
                             f"(N{''.join(f', {w}' for w in want)})")
        if n is None:
            n = len(cols[first])
        if len(arr) != n:
            raise CacheError(f"{path}: {tname}.{col} has {len(arr)} rows but {tname}.{first} "
                             f"has {n}")
        if dt != "U" and arr.dtype != np.dtype(dt):
            arr = arr.astype(dt)
        if col in _FINITE and tname == "faces":
            bad = ~np.isfinite(arr).all(axis=tuple(range(1, arr.ndim)))
            if bad.any():
                raise CacheError(f"{path}: {tname}.{col} has non-finite values (NaN or inf) in "
                                 f"{int(bad.sum())} rows, the first row {int(np.argmax(bad))}")
        out[col] = arr
    return out


def _read_npz(path: Path) -> tuple[dict, dict, dict, dict]:
    """One cache file (base or segment), validated against the schema; CacheError if bad."""
    arrays = _read_arrays(path)
    meta = _check_meta(path, arrays)
    tables: dict[str, dict] = {"paths": {}, "files": {}, "faces": {}}
    for k, v in arrays.items():
        tname, _, col = k.partition(".")
        if tname not in tables or not col:
            raise CacheError(f"{path}: {k} is not a table column of a face-sets cache")
        tables[tname][col] = v
    dim = meta.get("embedding_dim") or 0
    if not dim and any(v.size for v in tables["faces"].values()):
        raise CacheError(f"{path}: has faces but no meta.embedding_dim")
    for tname, cols in tables.items():
        if cols:
            tables[tname] = _check_table(path, tname, cols, dim)
    return meta, tables["paths"], tables["files"], tables["faces"]


def _seq(segment: Path) -> int:
    return int(_SEGMENT_RE.match(segment.name).group(1))


def _base_meta(cache_path: str | os.PathLike) -> dict:
    """The meta of the base file alone ({} without a base); for writers, under the lock."""
    base = Path(cache_path)
    if not base.is_file():
        return {}
    try:
        return _check_meta(base, _read_arrays(base, only_meta=True))
    except _Vanished:
        return {}


def compacted_through(cache_path: str | os.PathLike) -> int:
    """The last segment sequence folded into the base (0 without a base)."""
    return _base_meta(cache_path).get("compacted_through") or 0


def load_cache(cache_path: str | os.PathLike, must_exist: bool = True) -> FaceCache:
    """Load base + segments into one FaceCache (the only reader every command uses).

    Safe beside a compaction in another process: segments the base already holds (sequence
    <= its ``compacted_through``) are skipped, and a segment removed while this reads makes
    it list again (bounded), so a reader sees the cache before or after, never half of it.
    """
    cache_path = Path(cache_path)
    if cache_path.is_dir():
        _read_arrays(cache_path)  # raises: a folder is not a cache
    for attempt in range(_READ_ATTEMPTS):
        try:
            return _load_once(cache_path, must_exist)
        except _Vanished:
            time.sleep(min(0.005 * 2 ** attempt, 0.25))
    raise CacheError(f"{cache_path}: kept changing while being read ({_READ_ATTEMPTS} tries): "
                     "another face-sets process is writing it; try again when it is done")


def _load_once(cache_path: Path, must_exist: bool) -> FaceCache:
    # segments are listed before the base is looked at: a compaction writes the new base
    # before it removes segments, so an existing cache always shows one or the other
    segments = list_segments(cache_path)
    has_base = cache_path.is_file()
    if not segments and not has_base:
        if must_exist:
            raise CacheError(f"{cache_path}: no such cache; run `{program_name()} embed SRC "
                             f"{cache_path}` first")
        return FaceCache(meta={"schema_version": SCHEMA_VERSION})
    meta: dict = {}
    paths, files, faces, face_seq, mention_sha, mention_seq = [], [], [], [], [], []
    through = 0
    dims: dict[int, Path] = {}
    for seq, src in enumerate(([cache_path] if has_base else []) + segments):
        is_base = has_base and seq == 0
        if not is_base and _seq(src) <= through:
            continue  # the base already holds its rows (a compaction is removing it)
        m, p, f, fc = _read_npz(src)
        if is_base:
            through = m.get("compacted_through") or 0
        m.pop("compacted_through", None)
        if m.get("embedding_dim"):
            dims.setdefault(m["embedding_dim"], src)
            if len(dims) > 1:
                (d0, first), (d1, other) = list(dims.items())[:2]
                raise CacheError(f"{other}: meta.embedding_dim is {d1} but {first} has {d0}; "
                                 "a cache never mixes models")
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
    cache = FaceCache(meta=meta, compacted_through=through)
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


def save_cache(cache: FaceCache, cache_path: str | os.PathLike,
               compacted_through: int = 0) -> None:
    """Write ``cache`` whole as the base file, atomically (used by compaction).

    ``compacted_through``: the last segment sequence whose rows ``cache`` holds; readers
    skip segments up to it.
    """
    meta = dict(cache.meta, schema_version=SCHEMA_VERSION,
                saved=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta.pop("compacted_through", None)
    if compacted_through:
        meta["compacted_through"] = int(compacted_through)
    _write_npz(Path(cache_path), _to_arrays(meta, cache.paths, cache.files, cache.faces))


def remove_temp_files(cache_path: str | os.PathLike) -> None:
    """Temp files of writes killed half-way (``atomic_write``'s names); hold the lock."""
    base = Path(cache_path)
    for stale in [*base.parent.glob(f".{glob.escape(base.name)}.*.tmp"),
                  *segments_dir(base).glob(".seg-*.tmp")]:
        stale.unlink(missing_ok=True)


def compact_cache(cache_path: str | os.PathLike) -> int:
    """Fold all segments into the base file, then remove them. Returns segments folded.

    Call it with the cache lock held (every writer does, at the end of a run, and on a
    re-run that finds nothing to do, so segments left by a killed run never pile up).
    Crash-safe: the new base, which records the last segment it holds
    (``compacted_through``), replaces the old atomically before any segment is removed;
    readers skip segments the base already holds.
    """
    segs = list_segments(cache_path)
    if segs:
        through = compacted_through(cache_path)
        if _seq(segs[-1]) > through:
            save_cache(load_cache(cache_path), cache_path, _seq(segs[-1]))
        for s in segs:
            s.unlink(missing_ok=True)
        fsync_dir(segments_dir(cache_path))
    remove_temp_files(cache_path)
    return len(segs)


class SegmentWriter:
    """Appends rows to a cache as new segment files (the flush of embed, enrich, merge).

    Hold the cache lock while writing. Segment numbers continue after the base's
    ``compacted_through``, so a new segment is never mistaken for one already folded in.
    """

    def __init__(self, cache_path: str | os.PathLike, meta: dict):
        self.cache_path = Path(cache_path)
        self.meta = dict(meta, schema_version=SCHEMA_VERSION)
        self.meta.pop("compacted_through", None)  # the base's bookkeeping, not a segment's
        self.dim = int(self.meta.get("embedding_dim") or 0)
        self.pending: dict[str, list[dict]] = {"paths": [], "files": [], "faces": []}
        d = segments_dir(self.cache_path)
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob(".seg-*.tmp"):  # temp files of a writer killed mid-flush
            stale.unlink(missing_ok=True)
        existing = list_segments(self.cache_path)
        base = _base_meta(self.cache_path)
        have = base.get("embedding_dim") or 0
        if self.dim and have and have != self.dim:  # a segment the cache could never load
            raise CacheError(f"{self.cache_path}: holds {have}-D embeddings; refusing to add "
                             f"{self.dim}-D ones")
        self.next_seq = max(_seq(existing[-1]) if existing else 0,
                            base.get("compacted_through") or 0) + 1
        self.flushes = 0

    def add(self, table: str, **row) -> None:
        """Queue one row, checked now: every required column, no unknown one, right shapes.

        ``None`` stands for "unknown" in a float column (stored as NaN) and for "absent" in
        an optional face column.
        """
        schema = TABLES.get(table)
        if schema is None:
            raise CacheError(f"a cache has no table {table!r}")
        optional = OPTIONAL_FACE_COLUMNS if table == "faces" else {}
        unknown = [c for c in row if c not in schema and c not in optional]
        missing = [c for c in schema if c not in row]
        if unknown or missing:
            raise CacheError(f"cache table {table}: row with "
                             + "; ".join(filter(None, [
                                 unknown and f"unknown column {', '.join(unknown)}",
                                 missing and f"required column {', '.join(missing)} missing"]))
                             + f" (columns: {', '.join([*schema, *optional])})")
        checked: dict = {}
        for col, value in row.items():
            dt, sh = schema.get(col) or optional[col]
            if value is None:
                if col in optional:
                    continue
                if not dt.startswith("float"):
                    raise CacheError(f"cache table {table}: {col} is None")
                checked[col] = None
                continue
            if dt == "U":
                checked[col] = str(value)
                continue
            if None in sh and not self.dim:
                raise CacheError(f"cache table {table}: {col} given, but the cache meta has no "
                                 "embedding_dim")
            shape = tuple(self.dim if s is None else s for s in sh)
            try:
                arr = np.asarray(value, dtype=dt)
            except (TypeError, ValueError) as exc:
                raise CacheError(f"cache table {table}: {col} is not {dt} ({exc})") from None
            if arr.shape != shape:
                raise CacheError(f"cache table {table}: {col} has shape {arr.shape}, expected "
                                 f"{shape}")
            checked[col] = arr
        self.pending[table].append(checked)

    def pending_count(self) -> int:
        return sum(len(v) for v in self.pending.values())

    def _table(self, name: str, rows: list[dict]) -> dict[str, np.ndarray]:
        """Columns of the rows ``add`` checked; optional columns only when some row has one."""
        if not rows:
            return {}
        cols = dict(TABLES[name])
        if name == "faces":
            for opt, spec in OPTIONAL_FACE_COLUMNS.items():
                if any(opt in r for r in rows):
                    cols[opt] = spec
        out = {}
        for col, (dt, sh) in cols.items():
            shape = tuple(self.dim if s is None else s for s in sh)
            if dt == "U":
                out[col] = np.array([r[col] for r in rows], dtype=str).reshape(-1)
                if out[col].dtype.kind != "U":
                    out[col] = out[col].astype("<U1")
            else:
                fill = np.full(shape, np.nan if dt.startswith("float") else 0, dtype=dt)
                out[col] = np.stack([fill if r.get(col) is None else r[col] for r in rows])
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


def check_model(cache: FaceCache, model: str, model_id: str | None = None,
                cache_path: str = "") -> None:
    """Refuse to mix embeddings of two models in one cache."""
    have = cache.meta.get("model")
    if have and have != model:
        raise CacheError(f"{cache_path}: cache was made with model '{have}', not '{model}'; "
                         f"use --model {have} or another cache file")
    have_id = cache.meta.get("model_id")
    if model_id and have_id and have_id != model_id:
        raise CacheError(f"{cache_path}: cache was made with other weights ({have_id}) than "
                         f"this '{model}' pack ({model_id}); use the same pack or another "
                         "cache file")
