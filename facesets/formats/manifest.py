"""Manifest formats (docs/manifest-format.md): one source of truth for their kinds, versions,
file names and bodies (every writer, a step or a maintenance command, builds its manifest with
the functions here, so the same results give the same bytes). Every manifest is JSON, written
atomically, and read back through ``load_manifest``, which checks its kind, version and the
structure its readers use. The swap-ready folder's bodies are in ``formats.swapset``.
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from .. import __version__
from ..io.fsutil import atomic_write_json, make_staging, read_json
from ..io.materialize import LINK_MODES

MANIFEST_VERSION = 1
CLUSTER_MANIFEST = "face-sets/cluster"   # OUT/manifest.json of `cluster`
REFINE_MANIFEST = "face-sets/refine"     # OUT/refine_manifest.json of `refine`
SWAP_MANIFEST = "face-sets/swap"                   # OUT/manifest.json of `export-swap`
SWAP_FACESET_MANIFEST = "face-sets/swap-faceset"   # OUT/faceset_NNN/manifest.json
DUPLICATES_MANIFEST = "face-sets/duplicates"       # CACHE.duplicates.json of `dedup`
AUDIT_PLAN = "face-sets/audit-plan"     # OUT/.multiface_audit.plan.json of `audit-multiface apply`
KINDS = {CLUSTER_MANIFEST, REFINE_MANIFEST, SWAP_MANIFEST, SWAP_FACESET_MANIFEST,
         DUPLICATES_MANIFEST, AUDIT_PLAN}

# file names: the one place each is spelled
MANIFEST_FILE = "manifest.json"            # cluster's OUT, export-swap's OUT and its facesets
CLUSTER_MANIFEST_FILE = MANIFEST_FILE
REFINE_MANIFEST_FILE = "refine_manifest.json"
DUPLICATES_SUFFIX = ".duplicates.json"     # beside the cache: CACHE.duplicates.json
AUDIT_PLAN_FILE = ".multiface_audit.plan.json"   # in export-swap's OUT while an apply runs
# the manifests that mark a folder as face-sets output
MANIFEST_NAMES = (CLUSTER_MANIFEST_FILE, REFINE_MANIFEST_FILE)

# the names face-sets gives the folders and files a manifest lists (nothing else is accepted
# from a manifest: a name read from one must never lead outside the folder it belongs to)
PERSON_NAME = re.compile(r"person_[0-9]{3,}")
FACESET_BASE = r"faceset_[0-9]{3,}"
# an era of a faceset (`eras`): faceset_NNN_YYYY-YYYY or faceset_NNN_undated, _2... on a clash
ERA_SUFFIX = r"_(?:[0-9]{4}-[0-9]{4}|undated)(?:_[0-9]+)?"
FACESET_NAME = re.compile(rf"{FACESET_BASE}(?:{ERA_SUFFIX})?")
FACE_PNG = re.compile(r"faces/[0-9]{3,}\.png")                 # export: a ranked crop
DROPPED_PNG = re.compile(r"faces/_dropped/[0-9]{3,}(\.[0-9]+)?\.png")   # moved there by audit


class ManifestError(ValueError):
    """Not a manifest of the expected kind/version."""


def new_manifest(kind: str, cache_path: str, meta: dict, parameters: dict) -> dict:
    """The common head of every manifest."""
    return {"format": kind, "version": MANIFEST_VERSION, "tool_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cache": os.path.abspath(cache_path), "model": meta.get("model"),
            "model_id": meta.get("model_id"), "parameters": parameters}


def duplicates_path(cache_path: str | os.PathLike) -> Path:
    """Where dedup writes its report for a cache: ``CACHE.duplicates.json``."""
    return Path(os.fspath(cache_path) + DUPLICATES_SUFFIX)


def face_entry(key: str, sha256: str, paths: list[str], bbox, det_score: float,
               face_short: float, blur: float, placed: list[str] | None = None) -> dict:
    """A face as every manifest lists it: cache key, source path (canonical), aliases."""
    return {"key": key, "sha256": sha256, "path": paths[0] if paths else "",
            "aliases": list(paths[1:]), "bbox": [round(float(v), 1) for v in bbox],
            "det_score": round(float(det_score), 4), "face_short": round(float(face_short), 1),
            "blur": round(float(blur), 2), "files": list(placed or [])}


# dropped[] entries that name their gate's value and limit (refine's facesets[].dropped[],
# a swap faceset's dropped[]): the version of that section, written as ``dropped_version``
DROPPED_VERSION = 1
COHESION_VERSION = 1   # a swap faceset's ``cohesion`` (docs/manifest-format.md)


def dropped_entry(face: dict, gate: str, value: float | None, limit: float | None,
                  **extra) -> dict:
    """A face a gate dropped, as every manifest lists it: the face (its ``path`` is the
    photo), ``reason`` (the gate), the face's ``value`` and the gate's ``limit`` (numbers
    or null for gates without one, e.g. a crop that found two faces)."""
    def num(v):
        return None if v is None or not math.isfinite(float(v)) else round(float(v), 4)
    return dict(face, reason=gate, value=num(value), limit=num(limit), **extra)


# ---- bodies: every writer (a step now, a maintenance command later) builds them here -----
def person_entry(name: str, faces: list[dict], split: float | None = None) -> dict:
    """A person of the cluster manifest's ``persons[]``; ``split``: its split distance
    (core/cohesion.py: near the threshold, likely two people), when measured."""
    entry = {"name": name, "face_count": len(faces),
             "image_count": len({f["sha256"] for f in faces}), "faces": faces}
    if split is not None:
        entry["split"] = round(float(split), 4)
    return entry


def noface_entry(sha256: str, locations: list[str], placed: list[str]) -> dict:
    """A photo without a face (``noface[]``): canonical path, aliases, placed files."""
    return {"sha256": sha256, "path": locations[0], "aliases": locations[1:], "files": placed}


def error_entry(sha256: str, path: str, error: str) -> dict:
    """An unreadable file (``errors[]``); ``sha256`` is "" when it could not be hashed."""
    return {"sha256": sha256, "path": path, "error": error}


def cluster_summary(persons: int, singletons: int, noface: int, errors: int, faces: int,
                    missing_sources: int) -> dict:
    return {"persons": persons, "singletons": singletons, "noface": noface, "errors": errors,
            "faces": faces, "missing_sources": missing_sources}


def cluster_manifest(head: dict, persons: list[dict], singletons: list[dict],
                     noface: list[dict], errors: list[dict], missing: list[str],
                     faces: int) -> dict:
    """OUT/manifest.json of `cluster`: ``head`` (new_manifest, timing) and the groups;
    ``missing``: source files that could not be placed (repeats counted in the summary)."""
    return dict(head, summary=cluster_summary(len(persons), len(singletons), len(noface),
                                              len(errors), faces, len(missing)),
                persons=persons, singletons=singletons, noface=noface, errors=errors,
                missing_sources=sorted(set(missing)))


def faceset_entry(name: str, faces: list[dict], dropped: list[dict] | None = None) -> dict:
    """A faceset of the refine manifest's ``facesets[]``; ``dropped``: the faces refine's
    gates took out of its cluster (``dropped_entry``)."""
    images = [f["path"] for f in faces]
    return {"name": name, "face_count": len(faces), "image_count": len(set(images)),
            "alias_count": sum(len(f["aliases"]) for f in faces),
            "images": sorted(set(images)), "faces": faces, "dropped": list(dropped or [])}


def refine_manifest(head: dict, facesets: list[dict], faces_in: int, faces_kept: int,
                    dropped: dict, timing: dict) -> dict:
    """OUT/refine_manifest.json of `refine`."""
    return dict(head, summary={"facesets": len(facesets), "faces_in": faces_in,
                               "faces_kept": faces_kept, "dropped": dropped},
                timing=timing, dropped_version=DROPPED_VERSION, facesets=facesets)


def raw_extended_record(when: str, threshold: float, faces_added: int, joined: dict,
                        new_persons: list[str], singletons: int, noface: int,
                        errors: int) -> dict:
    """What `extend` added to a cluster manifest (an entry of its ``extended[]``)."""
    return {"when": when, "threshold": threshold, "faces_added": faces_added,
            "joined": joined, "new_persons": new_persons, "singletons": singletons,
            "noface": noface, "errors": errors}


def refine_extended_record(when: str, join_threshold: float, outlier_threshold: float,
                           faces_added: int, joined: dict, new_facesets: list[str],
                           dropped: dict, considered: list[str]) -> dict:
    """What `extend` added to a refine manifest (an entry of its ``extended[]``);
    ``considered``: the keys of every new face looked at, added or not."""
    return {"when": when, "join_threshold": join_threshold,
            "outlier_threshold": outlier_threshold, "faces_considered": len(considered),
            "faces_added": faces_added, "joined": joined, "new_facesets": new_facesets,
            "dropped": dropped, "considered": considered}


def duplicates_report(head: dict, identical: list[dict], photo_groups: list[dict],
                      face_groups: list[dict], photos: int, faces: int,
                      seconds: float) -> dict:
    """CACHE.duplicates.json of `dedup`."""
    summary = {
        "photos": photos, "faces": faces,
        "identical_groups": len(identical),
        "identical_extra_copies": sum(len(g["paths"]) - 1 for g in identical),
        "near_photo_groups": len(photo_groups),
        "near_photos": sum(len(g["photos"]) for g in photo_groups),
        "near_face_groups": len(face_groups),
        "seconds": seconds,
    }
    return dict(head, summary=summary, identical=identical, near_photos=photo_groups,
                near_faces=face_groups)


def audit_plan(run_id: str, queue: str, results: str, counts: dict, facesets: list[str],
               drops: list[dict]) -> dict:
    """OUT/.multiface_audit.plan.json: what an `audit-multiface apply` run is carrying out."""
    return {"format": AUDIT_PLAN, "version": MANIFEST_VERSION, "run_id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "queue": queue,
            "results": results, "counts": counts, "facesets": facesets, "drops": drops}


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    if manifest.get("format") not in KINDS:
        raise ManifestError(f"unknown manifest format {manifest.get('format')!r}")
    atomic_write_json(path, manifest)


def load_manifest(path: str | os.PathLike, kind: str) -> dict:
    """Read a manifest; a clear error if it is missing, not JSON, of another kind, or if a
    field its readers use has the wrong type or a name/path face-sets would not write."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest; run the step that writes it first")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    try:   # a photo or another binary file given in its place
        head.decode("utf-8")
        binary = b"\0" in head
    except UnicodeDecodeError as exc:
        binary = exc.start < len(head) - 3   # not a character cut at the 4096th byte
    if binary:
        raise ManifestError(f"{path}: not a {kind} manifest (binary data, not JSON text); "
                            "pass the right file")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != kind:
        raise ManifestError(f"{path}: not a {kind} manifest (format "
                            f"{data.get('format') if isinstance(data, dict) else '?'}); "
                            "pass the right file")
    version = data.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError(f"{path}: version {version!r} is not a number; restore the file "
                            "or re-run the step that writes it")
    if version > MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest v{data.get('version')} is newer than this "
                            "face-sets; upgrade face-sets")
    _VALIDATORS.get(kind, lambda c, d: None)(_Fields(path), data)
    return data


def safe_member_path(folder: str | os.PathLike, relpath, field: str,
                     source: str | os.PathLike | None = None) -> Path:
    """``folder/relpath`` for a relative path read from a file, refused (ManifestError
    naming ``source`` and ``field``) unless it is a relative path that resolves inside
    ``folder`` (symlinks followed)."""
    where = source if source is not None else folder
    if not isinstance(relpath, str) or not relpath or "\x00" in relpath \
            or os.path.isabs(relpath) or "\\" in relpath:
        raise ManifestError(f"{where}: {field} {relpath!r} is not a relative path")
    folder = Path(folder)
    target = folder / relpath
    try:
        inside = target.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):   # a symlink loop
        inside = False
    if not inside or ".." in Path(relpath).parts:
        raise ManifestError(f"{where}: {field} {relpath!r} leads outside {folder}; restore "
                            "the file or re-run the step that writes it")
    return target


# ---- structure of each kind: what the readers use, with the types they expect -----------
class _Fields:
    """Type checks on one manifest; a failure is one line naming the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str):
        raise ManifestError(f"{self.path}: {field} {problem}; restore the file or re-run the "
                            "step that writes it")

    def get(self, obj: dict, key: str, field: str, types: tuple, what: str,
            required: bool = True):
        name = f"{field}.{key}" if field else key
        if key not in obj:
            if required:
                self.fail(name, "is missing")
            return None
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            self.fail(name, f"is {type(value).__name__}, not {what}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(name, f"is {value}, not a finite number")
        return value

    def obj(self, o, k, f, required=True) -> dict:
        return self.get(o, k, f, (dict,), "an object", required) or {}

    def items(self, o, k, f, required=True) -> list[tuple[str, dict]]:
        """The list ``o[k]`` of objects, as (field name, object) pairs."""
        values = self.get(o, k, f, (list,), "a list", required) or []
        name = f"{f}.{k}" if f else k
        for i, v in enumerate(values):
            if not isinstance(v, dict):
                self.fail(f"{name}[{i}]", f"is {type(v).__name__}, not an object")
        return [(f"{name}[{i}]", v) for i, v in enumerate(values)]

    def strs(self, o, k, f, required=True) -> list[str]:
        values = self.get(o, k, f, (list,), "a list", required) or []
        for i, v in enumerate(values):
            if not isinstance(v, str):
                self.fail(f"{f}.{k}[{i}]" if f else f"{k}[{i}]",
                          f"is {type(v).__name__}, not a string")
        return values

    def str(self, o, k, f, required=True) -> str | None:
        return self.get(o, k, f, (str,), "a string", required)

    def num(self, o, k, f, required=True):
        return self.get(o, k, f, (int, float), "a number", required)

    def int(self, o, k, f, required=True):
        return self.get(o, k, f, (int,), "a whole number", required)

    def name(self, o, k, f, pattern: re.Pattern, what: str) -> str:
        value = self.str(o, k, f)
        if not pattern.fullmatch(value):
            self.fail(f"{f}.{k}" if f else k, f"{value!r} is not {what}")
        return value

    def plain_names(self, o, k, f, required=True) -> None:
        for i, v in enumerate(self.strs(o, k, f, required)):
            if v in ("", ".", "..") or "/" in v or "\\" in v or "\x00" in v:
                self.fail(f"{f}.{k}[{i}]", f"{v!r} is not a plain file name")


def _face_entries(c: _Fields, obj: dict, key: str, field: str, required=True) -> None:
    for f, e in c.items(obj, key, field, required):
        c.str(e, "key", f)
        c.str(e, "sha256", f)
        c.str(e, "path", f)
        c.strs(e, "aliases", f, required=False)
        c.plain_names(e, "files", f, required=False)


def _dropped_entries(c: _Fields, obj: dict, key: str, field: str, required=True) -> None:
    """``dropped[]``: each names its gate (``reason``); a gate's ``value``/``limit`` are
    numbers or null, its photo (``path``) a string."""
    for f, e in c.items(obj, key, field, required):
        c.str(e, "reason", f)
        c.str(e, "key", f, required=False)
        c.str(e, "path", f, required=False)
        for k in ("value", "limit"):
            if e.get(k) is not None:
                c.num(e, k, f)


def _check_dropped_version(c: _Fields, m: dict) -> None:
    if "dropped_version" in m and c.int(m, "dropped_version", "") > DROPPED_VERSION:
        c.fail("dropped_version", f"{m['dropped_version']} is newer than this face-sets "
               f"({DROPPED_VERSION}); upgrade face-sets")


def _check_head(c: _Fields, m: dict) -> dict:
    c.str(m, "cache", "", required=False)
    c.get(m, "model_id", "", (str, type(None)), "a string", required=False)
    params = c.obj(m, "parameters", "", required=False)
    if c.str(params, "link", "parameters", required=False) not in (None, *LINK_MODES):
        c.fail("parameters.link", f"{params['link']!r} is not one of {', '.join(LINK_MODES)}")
    return params


def _check_cluster(c: _Fields, m: dict) -> None:
    params = _check_head(c, m)
    c.num(params, "threshold", "parameters", required=False)
    for f, person in c.items(m, "persons", ""):
        c.name(person, "name", f, PERSON_NAME, "a person name (person_NNN)")
        _face_entries(c, person, "faces", f)
        c.num(person, "split", f, required=False)
    _face_entries(c, m, "singletons", "", required=False)
    for f, e in c.items(m, "noface", "", required=False):
        c.str(e, "sha256", f)
        c.plain_names(e, "files", f, required=False)
    for f, e in c.items(m, "errors", "", required=False):
        c.str(e, "sha256", f)
        c.str(e, "path", f)
    c.strs(m, "missing_sources", "", required=False)
    summary = c.obj(m, "summary", "", required=False)
    c.int(summary, "faces", "summary", required=False)
    c.items(m, "extended", "", required=False)


def _check_refine(c: _Fields, m: dict) -> None:
    params = _check_head(c, m)
    for k in ("initial_threshold", "merge_threshold", "outlier_threshold", "min_short",
              "min_blur", "min_det_score", "min_faces"):
        c.num(params, k, "parameters", required=False)
    c.str(params, "engine", "parameters", required=False)
    _check_dropped_version(c, m)
    for f, fs in c.items(m, "facesets", ""):
        c.name(fs, "name", f, FACESET_NAME, "a faceset name (faceset_NNN)")
        _face_entries(c, fs, "faces", f)
        _dropped_entries(c, fs, "dropped", f, required=False)
    summary = c.obj(m, "summary", "", required=False)
    c.int(summary, "faces_in", "summary", required=False)
    c.int(summary, "faces_kept", "summary", required=False)
    for f, rec in c.items(m, "extended", "", required=False):
        c.strs(rec, "considered", f, required=False)


def _check_swap(c: _Fields, m: dict) -> None:
    _check_head(c, m)
    c.str(m, "run", "", required=False)
    # the top-level manifest (it has a summary) lists its facesets; _candidates/ has none
    for f, e in c.items(m, "facesets", "", required="summary" in m or "candidates" not in m):
        c.name(e, "name", f, FACESET_NAME, "a faceset name (faceset_NNN)")
    for section in ("masked", "thin_eras", "merged", "multiface_audit", "added", "split"):
        c.items(m, section, "", required=False)


def _check_swap_faceset(c: _Fields, m: dict) -> None:
    _check_head(c, m)
    c.name(m, "name", "", FACESET_NAME, "a faceset name (faceset_NNN)")
    if c.int(m, "top_n", "") < 1:
        c.fail("top_n", f"{m['top_n']} is not a positive number")
    centroid = c.get(m, "centroid", "", (list,), "a list", required=False) or []
    for i, v in enumerate(centroid):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            c.fail(f"centroid[{i}]", f"{v!r} is not a finite number")
    for f, face in c.items(m, "faces", ""):
        c.int(face, "rank", f)
        c.name(face, "file", f, FACE_PNG, "a face PNG (faces/NNN.png)")
        c.str(face, "key", f)
    _check_dropped_version(c, m)
    _dropped_entries(c, m, "dropped", "")
    for f, e in c.items(m, "dropped", ""):
        if "moved_to" in e:
            c.name(e, "moved_to", f, DROPPED_PNG, "a dropped PNG (faces/_dropped/NNN.png)")
    c.obj(m, "summary", "")
    c.items(m, "history", "", required=False)
    _check_cohesion(c, m)


def _check_cohesion(c: _Fields, m: dict) -> None:
    """A swap faceset's optional ``cohesion``: {version, split (a distance in [0, 2]),
    faces (how many it was measured on), threshold (a distance, or null), likely_mixed}; older
    libraries have none."""
    if "cohesion" not in m:
        return
    coh = c.obj(m, "cohesion", "")
    if c.int(coh, "version", "cohesion") > COHESION_VERSION:
        c.fail("cohesion.version", f"{coh['version']} is newer than this face-sets "
               f"({COHESION_VERSION}); upgrade face-sets")
    split = coh.get("split")
    if not isinstance(split, (int, float)) or isinstance(split, bool) \
            or not math.isfinite(split) or not 0.0 <= split <= 2.0:
        c.fail("cohesion.split", f"{split!r} is not a distance between 0 and 2")
    if c.int(coh, "faces", "cohesion") < 0:
        c.fail("cohesion.faces", f"{coh['faces']} is negative")
    threshold = coh.get("threshold")
    if threshold is not None and (not isinstance(threshold, (int, float))
                                  or isinstance(threshold, bool)
                                  or not math.isfinite(threshold) or not 0.0 < threshold <= 2.0):
        c.fail("cohesion.threshold", f"{threshold!r} is not a distance between 0 and 2")
    c.get(coh, "likely_mixed", "cohesion", (bool,), "true or false")


def _check_audit_plan(c: _Fields, m: dict) -> None:
    c.str(m, "run_id", "")
    c.str(m, "queue", "")
    c.str(m, "results", "")
    c.obj(m, "counts", "")
    for i, name in enumerate(c.strs(m, "facesets", "")):
        if not FACESET_NAME.fullmatch(name):
            c.fail(f"facesets[{i}]", f"{name!r} is not a faceset name (faceset_NNN)")
    for f, d in c.items(m, "drops", ""):
        c.name(d, "faceset", f, FACESET_NAME, "a faceset name (faceset_NNN)")
        c.name(d, "file", f, FACE_PNG, "a face PNG (faces/NNN.png)")
        c.name(d, "moved_to", f, DROPPED_PNG, "a dropped PNG (faces/_dropped/NNN.png)")
        c.int(d, "faces", f)


_VALIDATORS = {CLUSTER_MANIFEST: _check_cluster, REFINE_MANIFEST: _check_refine,
               SWAP_MANIFEST: _check_swap, SWAP_FACESET_MANIFEST: _check_swap_faceset,
               AUDIT_PLAN: _check_audit_plan}


def centroid_of(manifest: dict, path: str | os.PathLike, dim: int | None):
    """A faceset manifest's centroid (checked finite numbers on load) as a unit float32
    vector; ManifestError naming the file when it is not of the model's dimension ``dim``."""
    import numpy as np

    c = manifest.get("centroid") or []
    if not c or (dim is not None and len(c) != dim):
        raise ManifestError(f"{path}: centroid has {len(c)} values, the model's embeddings "
                            f"{dim}; restore the file or re-run export-swap")
    v = np.asarray(c, dtype=np.float32)
    return v / (np.linalg.norm(v) or 1.0)


def holds_face_sets_manifest(folder: Path) -> bool:
    """True if ``folder`` holds a manifest face-sets wrote (its ``format`` is "face-sets/...")."""
    for name in MANIFEST_NAMES:
        p = Path(folder) / name
        if p.is_file():
            try:
                fmt = read_json(p).get("format")
            except (ValueError, OSError, AttributeError, UnicodeDecodeError):
                return False
            return isinstance(fmt, str) and fmt.startswith("face-sets/")
    return False


def is_face_sets_output(folder: Path) -> bool:
    """True if ``folder`` holds a manifest written by face-sets, or is empty (safe to replace)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in MANIFEST_NAMES):
        return holds_face_sets_manifest(folder)
    return not any(folder.iterdir())


def staging_dir(out: Path) -> Path:
    """A fresh folder to build ``out`` in, inside a hidden sibling face-sets owns (marked;
    leftovers of killed runs are removed, nothing else is)."""
    return make_staging(out)


def start_output(out: Path) -> Path:
    """Check ``out`` may be replaced (absent, empty or made by face-sets) and return a
    fresh staging folder to build it in; ``replace_dir`` swaps it in at the end."""
    out = Path(out)
    if out.exists() and not is_face_sets_output(out):
        raise FileExistsError(f"{out} exists and was not made by face-sets; choose an empty "
                              "or new output folder")
    return staging_dir(out)
