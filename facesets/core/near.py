"""Visual near-duplicates: faces of different photos at cosine distance <= a small bound
whose boxes take the same share of their image (re-encodes, resizes, screenshots).

The neighbour search is exact up to EXACT_MAX_FACES faces: a chunked matrix product over the
upper triangle (memory bounded by ``CHUNK_ELEMENTS``; never an N x N matrix) keeping only
the pairs under the distance. Beyond that its time grows as N^2 (~50 s at 100k faces), so
larger caches use the clustering engine's neighbour search (engine.knn, ~2 min at a million
faces), keeping each face's DUP_NEIGHBOURS nearest within the distance: a face with more
near-copies than that still links to all of them through the groups (connected components).
Used by ``dedup`` (the report) and ``export-swap`` (the near-duplicate gate).
"""
from __future__ import annotations

import numpy as np
from ..runtime.progress import progress_bar

from ..formats.cache import FaceCache
from .selection import FaceSelection

DEFAULT_MAX_DISTANCE = 0.03

DEFAULT_SIZE_TOLERANCE = 0.15


def near_pairs(embeddings: np.ndarray, max_distance: float, progress: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of unit embeddings at cosine distance <= ``max_distance``, and their
    distances: block by block over the upper triangle, or by neighbour search when large."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if n > EXACT_MAX_FACES:
        from ..engine.knn import knn_edges

        u, v, d = knn_edges(x, DUP_NEIGHBOURS, max_distance, progress=progress)
        return np.stack([u, v], axis=1).astype(np.int64), d.astype(np.float32)
    rows = max(1, min(n, CHUNK_ELEMENTS // max(n, 1)))
    min_sim = np.float32(1.0 - max_distance)
    found_i, found_j, found_d = [], [], []
    with progress_bar(total=n, desc="near-duplicates", unit="face",
                      disable=not progress) as bar:
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


# similarities computed per block (rows x columns): 32M float32 = 128 MB
CHUNK_ELEMENTS = 32 * 1024 * 1024

EXACT_MAX_FACES = 30000

DUP_NEIGHBOURS = 32
