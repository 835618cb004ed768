"""``verify-fsz``: open bundles exactly as roop-unleashed does and check the one-face rule.

The consumer unzips a ``.fsz``, reads only its PNGs, detects every face in each, embeds them
all and averages the embeddings (a plain mean). ``verify_bundle`` does the same with our
backend and reports the faces found per PNG and how close the average lands to the faceset's
centroid (stored in the faceset's manifest beside the bundle; used only when that centroid
was made by the same recognition weights as the checking model).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends.base import FaceBackend
from ..formats.bundle import FszContents, read_fsz
from ..formats.cache import CacheError, cache_exists, load_cache
from ..core.library import Faceset
from ..formats.manifest import (SWAP_FACESET_MANIFEST, SWAP_MANIFEST, ManifestError,
                                centroid_of, load_manifest, safe_member_path)
from ..formats.swapset import MANIFEST_NAME
from ..io.fsutil import read_json
from ..io.imageio import DEFAULT_MAX_PIXELS, ImageError, decode, read_header


@dataclass
class BundleReport:
    path: str
    faces_per_png: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # non-PNG members, ignored
    undecodable: list[tuple[str, str]] = field(default_factory=list)  # (member, why)
    similarity: float | None = None                      # cosine(mean embedding, centroid)
    centroid_note: str = ""

    @property
    def png_count(self) -> int:
        return len(self.faces_per_png)

    @property
    def bad(self) -> list[tuple[str, int]]:
        return [(n, c) for n, c in self.faces_per_png if c != 1]

    @property
    def ok(self) -> bool:
        return self.png_count > 0 and not self.bad


def bundle_centroid(path: Path, model_id: str, dim: int | None) -> tuple[np.ndarray | None, str]:
    """The centroid of the faceset a bundle belongs to, if its manifest is beside it."""
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None, "no faceset manifest beside the bundle"
    try:
        m = load_manifest(manifest, SWAP_FACESET_MANIFEST)
    except (ManifestError, ValueError, OSError) as exc:
        return None, str(exc)
    if not m.get("centroid"):
        return None, "faceset manifest has no centroid"
    if m.get("model_id") != model_id:
        return None, (f"centroid made by {m.get('model_id')}, checking with {model_id}: "
                      "not comparable")
    try:
        return centroid_of(m, manifest, dim), ""
    except ManifestError as exc:
        return None, str(exc)


def png_digest(contents: FszContents) -> str:
    """Digest of a bundle's PNG members in order: two bundles with the same digest hold the
    same faces (a faceset's _all and _topN when it has no more than N faces)."""
    h = hashlib.sha256()
    for name, data in contents.pngs:
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def bundle_model(path: Path, caches: dict[str, dict] | None = None) -> tuple[dict, str]:
    """The model meta (``model``, ``model_id``, ``pack_dir`` where known) of the faceset a
    bundle belongs to, from the manifest beside it and the meta of the cache that manifest
    names (``pack_dir`` only when that cache holds the same weights), and where it was read;
    ({}, why) without a readable manifest."""
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return {}, f"no faceset manifest beside {path}"
    try:
        m = load_manifest(manifest, SWAP_FACESET_MANIFEST)
    except (ManifestError, ValueError, OSError) as exc:
        return {}, str(exc)
    meta = {k: m[k] for k in ("model", "model_id") if isinstance(m.get(k), str)}
    cache = m.get("cache")
    if isinstance(cache, str) and meta:
        caches = {} if caches is None else caches
        if cache not in caches:
            try:
                caches[cache] = load_cache(cache).meta if cache_exists(cache) else {}
            except (CacheError, ValueError, OSError):
                caches[cache] = {}
        cmeta = caches[cache]
        if cmeta.get("model_id") == meta.get("model_id") and isinstance(
                cmeta.get("pack_dir"), str):
            meta["pack_dir"] = cmeta["pack_dir"]
    return meta, str(manifest)


def verify_bundle(path: str | os.PathLike, backend: FaceBackend,
                  max_pixels: int = DEFAULT_MAX_PIXELS,
                  contents: FszContents | None = None) -> BundleReport:
    path = Path(path)
    contents = read_fsz(path) if contents is None else contents
    report = BundleReport(path=str(path), skipped=contents.skipped)
    embeddings = []
    for name, data in contents.pngs:
        try:
            # the header first: a PNG member may claim any size (a decompression bomb)
            read_header(data, max_pixels)
            image = decode(data)
        except ImageError as exc:
            report.undecodable.append((name, str(exc)))
            report.faces_per_png.append((name, 0))
            continue
        faces = backend.detect(image)
        backend.embed(image, faces)
        report.faces_per_png.append((name, len(faces)))
        embeddings += [f.embedding for f in faces]
    centroid, report.centroid_note = bundle_centroid(
        path, backend.model_id, len(embeddings[0]) if embeddings else None)
    if embeddings and centroid is not None:
        mean = np.mean(np.stack(embeddings), axis=0)   # the consumer's plain mean
        report.similarity = float(mean @ centroid / (np.linalg.norm(mean) or 1.0))
    return report


def find_bundles(paths: list[str]) -> list[Path]:
    """Bundles named on the command line; a folder stands for every .fsz under it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.fsz") if not any(
                part.startswith(".") for part in q.relative_to(p).parts))
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such bundle or folder")
    if not found:
        raise FileNotFoundError(f"no .fsz bundle under {', '.join(paths)}")
    return found


def listing_problems(folder: str | os.PathLike) -> list[str]:
    """Where a swap-ready library's top-level manifest and the disk disagree about bundles:
    each listed faceset's ``top_bundle``/``all_bundle`` must be the file its own manifest
    names (by the one naming rule, ``Faceset.bundle_names``) and be on disk. [] when
    ``folder`` holds no top-level manifest (plain bundles are checked as they are)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:   # a faceset folder or any other manifest: its bundles are checked as they are
        if not path.is_file() or read_json(path).get("format") != SWAP_MANIFEST:
            return []
        top = load_manifest(path, SWAP_MANIFEST)
    except (ManifestError, ValueError, AttributeError) as exc:
        return [str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"]
    if "summary" not in top:
        return []
    problems = []
    for i, e in enumerate(top.get("facesets", [])):
        where = f"{path}: facesets[{i}] ({e['name']})"
        try:
            fs = Faceset.load(safe_member_path(folder, e["name"], f"facesets[{i}].name", path))
        except (ManifestError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        names = fs.bundle_names()
        for key in ("top", "all"):
            listed = e.get(f"{key}_bundle")
            want = f"{e['name']}/{names[key]}"
            if listed != want:
                problems.append(f"{where}: {key}_bundle is {listed!r}, but its bundle is "
                                f"{want}")
            elif not (folder / want).is_file():
                problems.append(f"{where}: {key}_bundle {want} is not on disk")
    return problems
