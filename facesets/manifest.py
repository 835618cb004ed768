"""Manifest formats (docs/manifest-format.md): one source of truth for their names, versions
and the shape of a face entry. Every manifest is JSON, written atomically, and read back
through ``load_manifest``, which checks its kind and version.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from . import __version__
from .fsutil import atomic_write_json, read_json

MANIFEST_VERSION = 1
CLUSTER_MANIFEST = "face-sets/cluster"   # OUT/manifest.json of `cluster`
REFINE_MANIFEST = "face-sets/refine"     # OUT/refine_manifest.json of `refine`
SWAP_MANIFEST = "face-sets/swap"                   # OUT/manifest.json of `export-swap`
SWAP_FACESET_MANIFEST = "face-sets/swap-faceset"   # OUT/faceset_NNN/manifest.json
DUPLICATES_MANIFEST = "face-sets/duplicates"       # CACHE.duplicates.json of `dedup`
KINDS = {CLUSTER_MANIFEST, REFINE_MANIFEST, SWAP_MANIFEST, SWAP_FACESET_MANIFEST,
         DUPLICATES_MANIFEST}


class ManifestError(ValueError):
    """Not a manifest of the expected kind/version."""


def new_manifest(kind: str, cache_path: str, meta: dict, parameters: dict) -> dict:
    """The common head of every manifest."""
    return {"format": kind, "version": MANIFEST_VERSION, "tool_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cache": os.path.abspath(cache_path), "model": meta.get("model"),
            "model_id": meta.get("model_id"), "parameters": parameters}


def face_entry(key: str, sha256: str, paths: list[str], bbox, det_score: float,
               face_short: float, blur: float, placed: list[str] | None = None) -> dict:
    """A face as every manifest lists it: cache key, source path (canonical), aliases."""
    return {"key": key, "sha256": sha256, "path": paths[0] if paths else "",
            "aliases": list(paths[1:]), "bbox": [round(float(v), 1) for v in bbox],
            "det_score": round(float(det_score), 4), "face_short": round(float(face_short), 1),
            "blur": round(float(blur), 2), "files": list(placed or [])}


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    if manifest.get("format") not in KINDS:
        raise ManifestError(f"unknown manifest format {manifest.get('format')!r}")
    atomic_write_json(path, manifest)


def load_manifest(path: str | os.PathLike, kind: str) -> dict:
    """Read a manifest; a clear error if it is missing, not JSON or of another kind."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest; run the step that writes it first")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != kind:
        raise ManifestError(f"{path}: not a {kind} manifest (format "
                            f"{data.get('format') if isinstance(data, dict) else '?'}); "
                            "pass the right file")
    if int(data.get("version", 0)) > MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest v{data.get('version')} is newer than this "
                            "face-sets; upgrade face-sets")
    return data


MANIFEST_NAMES = ("manifest.json", "refine_manifest.json")


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
