"""``dedup``: byte-identical copies and visual near-duplicates, into ``CACHE.duplicates.json``.

  * identical: one content (sha256) recorded at several paths (the cache's aliases);
  * near: two faces of different photos at cosine distance <= ``max_distance`` (0.03) whose
    boxes take the same share of their image (width and height within ``size_tolerance``):
    re-encodes, resizes and screenshots of one photo. Linked faces form face groups
    (connected components); photos linked through any of their faces form photo groups.
The neighbour search is exact up to EXACT_MAX_FACES faces: a chunked matrix product over the
upper triangle (memory bounded by ``CHUNK_ELEMENTS``; never an N x N matrix) keeping only
the pairs under the distance. Beyond that its time grows as N^2 (~50 s at 100k faces), so
larger caches use the clustering engine's neighbour search (engine.knn, ~2 min at a million
faces), keeping each face's DUP_NEIGHBOURS nearest within the distance: a face with more
near-copies than that still links to all of them through the groups (connected components).
Format: DUPLICATES_MANIFEST, docs/manifest-format.md.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cache import FaceCache, load_cache
from .cluster import FaceSelection, entry_for, select_faces
from .manifest import DUPLICATES_MANIFEST, new_manifest, write_manifest

DEFAULT_MAX_DISTANCE = 0.03
DEFAULT_SIZE_TOLERANCE = 0.15
# similarities computed per block (rows x columns): 32M float32 = 128 MB
CHUNK_ELEMENTS = 32 * 1024 * 1024
EXACT_MAX_FACES = 30000
DUP_NEIGHBOURS = 32


def duplicates_path(cache_path: str | os.PathLike) -> Path:
    """Where dedup writes its report for a cache: ``CACHE.duplicates.json``."""
    return Path(os.fspath(cache_path) + ".duplicates.json")


def near_pairs(embeddings: np.ndarray, max_distance: float, progress: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of unit embeddings at cosine distance <= ``max_distance``, and their
    distances: block by block over the upper triangle, or by neighbour search when large."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if n > EXACT_MAX_FACES:
        from .engine.knn import knn_edges

        u, v, d = knn_edges(x, DUP_NEIGHBOURS, max_distance, progress=progress)
        return np.stack([u, v], axis=1).astype(np.int64), d.astype(np.float32)
    rows = max(1, min(n, CHUNK_ELEMENTS // max(n, 1)))
    min_sim = np.float32(1.0 - max_distance)
    found_i, found_j, found_d = [], [], []
    with tqdm(total=n, desc="near-duplicates", unit="face", disable=not progress) as bar:
        for s in range(0, n, rows):
            block = x[s:s + rows] @ x[s:].T          # rows x (n - s): upper part only
            i, j = np.nonzero(block >= min_sim)
            keep = j > i                              # column j of the block is face s + j
            i, j = i[keep], j[keep]
            found_d.append(1.0 - block[i, j])
            found_i.append(i + s)
            found_j.append(j + s)
            bar.update(min(rows, n - s))
    if not found_i:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    pairs = np.stack([np.concatenate(found_i), np.concatenate(found_j)], axis=1)
    return pairs.astype(np.int64), np.clip(np.concatenate(found_d), 0, 2).astype(np.float32)


def relative_sizes(cache: FaceCache, sel: FaceSelection) -> np.ndarray:
    """(N, 2) box width and height of each selected face as a share of its image's."""
    frow = cache.file_row_of_faces()[sel.rows]
    wh = np.stack([cache.files["width"], cache.files["height"]], axis=1).astype(np.float64)
    dims = np.where(frow[:, None] >= 0, wh[np.maximum(frow, 0)], np.nan)
    bbox = cache.faces["bbox"][sel.rows].astype(np.float64)
    box = np.stack([bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1]], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return box / dims


def same_relative_size(rel: np.ndarray, pairs: np.ndarray, tolerance: float) -> np.ndarray:
    """For each pair, True when both faces take the same share of their image (within
    ``tolerance`` of the larger share, in width and in height)."""
    a, b = rel[pairs[:, 0]], rel[pairs[:, 1]]
    with np.errstate(invalid="ignore"):
        ok = np.abs(a - b) <= tolerance * np.maximum(a, b)
    return ok.all(axis=1)


def components(n: int, pairs: np.ndarray) -> list[np.ndarray]:
    """Connected components (2+ members) of the graph of ``pairs`` over 0..n-1."""
    if len(pairs) == 0:
        return []
    # imported here: SciPy's import costs ~0.25 s at every CLI start otherwise
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    groups = [np.flatnonzero(labels == k) for k in np.flatnonzero(sizes >= 2)]
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


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
    report = new_manifest(DUPLICATES_MANIFEST, os.fspath(cache_path), cache.meta,
                          {"max_distance": max_distance, "size_tolerance": size_tolerance})
    summary = {
        "photos": len(cache.locations()), "faces": len(sel),
        "identical_groups": len(identical),
        "identical_extra_copies": sum(len(g["paths"]) - 1 for g in identical),
        "near_photo_groups": len(photo_groups),
        "near_photos": sum(len(g["photos"]) for g in photo_groups),
        "near_face_groups": len(face_groups),
        "seconds": round(time.monotonic() - t0, 2),
    }
    report.update({"summary": summary, "identical": identical, "near_photos": photo_groups,
                   "near_faces": face_groups})
    out = duplicates_path(cache_path)
    write_manifest(out, report)
    return dict(summary, report=str(out))
