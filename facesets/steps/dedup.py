"""``dedup``: byte-identical copies and visual near-duplicates, into ``CACHE.duplicates.json``.

  * identical: one content (sha256) recorded at several paths (the cache's aliases);
  * near: two faces of different photos at cosine distance <= ``max_distance`` (0.03) whose
    boxes take the same share of their image (width and height within ``size_tolerance``):
    re-encodes, resizes and screenshots of one photo. Linked faces form face groups
    (connected components); photos linked through any of their faces form photo groups.
The near-duplicate search (exact, chunked, or by neighbour search past 30,000 faces) is
``core/near.py``, shared with export-swap's near-duplicate gate.
Format: DUPLICATES_MANIFEST, docs/manifest-format.md.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..core.near import (DEFAULT_MAX_DISTANCE, DEFAULT_SIZE_TOLERANCE, components, near_pairs,
                         relative_sizes, same_relative_size)
from ..core.selection import FaceSelection, entry_for, select_faces
from ..formats.cache import FaceCache, load_cache
from ..formats.manifest import (DUPLICATES_MANIFEST, duplicates_path, duplicates_report,
                                new_manifest, write_manifest)


def identical_groups(cache: FaceCache) -> list[dict]:
    """Contents recorded at two or more paths (canonical path first)."""
    return [{"sha256": sha, "paths": paths}
            for sha, paths in sorted(cache.locations().items()) if len(paths) >= 2]


def near_groups(cache: FaceCache, sel: FaceSelection, max_distance: float,
                size_tolerance: float, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """(face groups, photo groups) of visual near-duplicates."""
    pairs, dist = near_pairs(sel.embeddings, max_distance, progress)
    if len(pairs):
        keep = (sel.sha256[pairs[:, 0]] != sel.sha256[pairs[:, 1]]) & same_relative_size(
            relative_sizes(cache, sel), pairs, size_tolerance)
        pairs, dist = pairs[keep], dist[keep]
    face_groups = []
    for members in components(len(sel), pairs):
        inside = np.isin(pairs[:, 0], members)
        face_groups.append({"max_distance": round(float(dist[inside].max()), 4),
                            "faces": [entry_for(cache, sel, i) for i in members]})
    # photo groups: the same graph over photos
    shas, photo = np.unique(sel.sha256, return_inverse=True)
    photo = photo.reshape(-1)
    photo_groups = []
    for members in components(len(shas), photo[pairs] if len(pairs) else pairs):
        photo_groups.append({"photos": [{"sha256": str(shas[k]),
                                         "paths": sel.locations.get(str(shas[k]), [])}
                                        for k in members]})
    return face_groups, photo_groups


def run_dedup(cache_path: str | os.PathLike, max_distance: float = DEFAULT_MAX_DISTANCE,
              size_tolerance: float = DEFAULT_SIZE_TOLERANCE, progress: bool = True) -> dict:
    """The whole ``dedup`` command: find duplicates, write ``CACHE.duplicates.json``.

    Returns the summary (also stored in the report), with ``report`` = the path written.
    """
    if not 0 <= max_distance < 1:
        raise ValueError(f"--max-distance {max_distance}: must be in [0, 1)")
    if size_tolerance < 0:
        raise ValueError(f"--size-tolerance {size_tolerance}: must be >= 0")
    t0 = time.monotonic()
    cache = load_cache(cache_path)
    sel = select_faces(cache)
    identical = identical_groups(cache)
    face_groups, photo_groups = near_groups(cache, sel, max_distance, size_tolerance, progress)
    head = new_manifest(DUPLICATES_MANIFEST, os.fspath(cache_path), cache.meta,
                        {"max_distance": max_distance, "size_tolerance": size_tolerance})
    report = duplicates_report(head, identical, photo_groups, face_groups,
                               len(cache.locations()), len(sel),
                               round(time.monotonic() - t0, 2))
    out = duplicates_path(cache_path)
    write_manifest(out, report)
    return dict(report["summary"], report=str(out))
