"""The sparse neighbour graph the graph engine clusters on: each face's k nearest
neighbours (cosine), keeping only the pairs within the clustering threshold.

Two searches, chosen by size (``knn_edges(method="auto")``):
  * flat:  faiss exact inner-product search (BLAS), for up to FLAT_MAX_FACES faces;
  * cells: an inverted-file search (k-means cells, each face probes its nearest cells),
           run cell by cell as dense BLAS products, for more.
Measured against faiss IVF-Flat and hnswlib in docs/clustering.md: on this 2-core machine
the cell-by-cell products are several times faster at the same recall.
Only this module (and the engine) talk to faiss.
"""
from __future__ import annotations

import os

import numpy as np

from ..runtime.progress import progress_bar

FLAT_MAX_FACES = 30000       # exact search below this: N^2 * D flops stays a few seconds
DEFAULT_K = 32               # neighbours per face: enough to keep an identity connected
SEARCH_BATCH = 8192
CELLS_PER_SQRT_N = 2         # k-means cells: 2 sqrt(N) (2000 at a million faces)
TRAIN_PER_CELL = 24          # k-means sample per cell
DEFAULT_PROBES = 8           # cells each face looks into


def _faiss():
    import faiss
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return faiss


def flat_index(x: np.ndarray):
    faiss = _faiss()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def _coarse_cells(x: np.ndarray, n_cells: int, seed: int = 1234) -> np.ndarray:
    """Spherical k-means cell centres (faiss, trained on a sample of the rows)."""
    faiss = _faiss()
    n, dim = x.shape
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, min(n, n_cells * TRAIN_PER_CELL), replace=False))]
    km = faiss.Kmeans(dim, n_cells, niter=10, spherical=True, seed=seed,
                      max_points_per_centroid=TRAIN_PER_CELL, min_points_per_centroid=1)
    km.train(sample)
    return km.centroids


def _cell_search(x: np.ndarray, kk: int, n_probe: int | None, progress: bool):
    """Approximate k-NN (an inverted-file search done cell by cell): every face belongs to
    its nearest k-means cell and looks into its ``n_probe`` nearest cells. Cell by cell, all
    the faces looking into it are searched exactly against its members in one BLAS product.
    Yields (query rows, neighbour ids, similarities) per cell; a query appears once per
    probed cell (knn_edges keeps its k best overall)."""
    faiss = _faiss()
    n = len(x)
    n_cells = int(max(8, min(65536, CELLS_PER_SQRT_N * np.sqrt(n))))
    cents = _coarse_cells(x, n_cells)
    probes = faiss.knn(x, cents, min(n_probe or DEFAULT_PROBES, n_cells),
                       metric=faiss.METRIC_INNER_PRODUCT)[1]
    cell = probes[:, 0]
    members = np.argsort(cell, kind="stable")
    mb = np.r_[0, np.cumsum(np.bincount(cell, minlength=n_cells))]
    looks = probes.reshape(-1)
    ok = looks >= 0
    queries = np.repeat(np.arange(n, dtype=np.int64), probes.shape[1])[ok]
    looks = looks[ok]
    by_cell = np.argsort(looks, kind="stable")
    queries = queries[by_cell]
    qb = np.r_[0, np.cumsum(np.bincount(looks, minlength=n_cells))]
    del probes, looks, by_cell
    bar = progress_bar(total=len(queries), desc="neighbours (cells)", unit="probe",
                       disable=not progress, leave=False)
    for c in range(n_cells):
        if mb[c] == mb[c + 1] or qb[c] == qb[c + 1]:
            continue
        base = members[mb[c]:mb[c + 1]]
        q = queries[qb[c]:qb[c + 1]]
        sims, nbr = faiss.knn(x[q], x[base], min(kk, len(base)),
                              metric=faiss.METRIC_INNER_PRODUCT)
        yield q, np.where(nbr >= 0, base[np.maximum(nbr, 0)], -1), sims
        bar.update(len(q))
    bar.close()


def _flat_search(x: np.ndarray, kk: int, progress: bool):
    """Exact k-NN in batches of queries."""
    index = flat_index(x)
    bar = progress_bar(total=len(x), desc="neighbours (flat)", unit="face", disable=not progress,
                       leave=False)
    for s in range(0, len(x), SEARCH_BATCH):
        sims, nbr = index.search(x[s:s + SEARCH_BATCH], kk)
        yield np.arange(s, s + len(nbr), dtype=np.int64), nbr, sims
        bar.update(len(nbr))
    bar.close()


def _k_nearest_per_face(q: np.ndarray, nbr: np.ndarray, d: np.ndarray, k: int):
    """Of the (query, neighbour, distance) rows, the k nearest per query."""
    order = np.lexsort((d, q))
    q, nbr, d = q[order], nbr[order], d[order]
    start = np.r_[0, np.flatnonzero(np.diff(q)) + 1]
    first = np.repeat(start, np.diff(np.r_[start, len(q)]))
    keep = np.arange(len(q)) - first < k
    return q[keep], nbr[keep], d[keep]


def knn_edges(x: np.ndarray, k: int = DEFAULT_K, max_dist: float = 2.0, method: str = "auto",
              progress: bool = False, n_probe: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges (u < v, unique) between each unit row of ``x`` and its ``k`` nearest
    neighbours, keeping only cosine distance <= ``max_dist``. Returns (u, v, distance)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n < 2:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0, dtype=np.float32)
    if method == "auto":
        method = "flat" if n <= FLAT_MAX_FACES else "cells"
    if method not in ("flat", "cells"):
        raise ValueError(f"unknown neighbour search {method!r}; choose auto, flat or cells")
    kk = min(k + 1, n)  # +1: a face finds itself
    found = _flat_search(x, kk, progress) if method == "flat" else \
        _cell_search(x, kk, n_probe, progress)
    us, vs, ds = [], [], []
    for rows, nbr, sims in found:
        width = nbr.shape[1]
        rows = np.repeat(rows.astype(np.int64), width)
        nbr = nbr.reshape(-1).astype(np.int64)
        dist = (1.0 - sims.reshape(-1)).astype(np.float32)
        ok = (nbr >= 0) & (nbr != rows) & (dist <= max_dist)
        us.append(rows[ok])
        vs.append(nbr[ok])
        ds.append(dist[ok])
    u, v, d = np.concatenate(us), np.concatenate(vs), np.concatenate(ds)
    if method == "cells":  # a face met candidates in several cells: keep its k nearest
        u, v, d = _k_nearest_per_face(u, v, d, k)
    # both directions of a pair may be found: keep one
    u, v = np.minimum(u, v), np.maximum(u, v)
    key = u * n + v
    key, first = np.unique(key, return_index=True)
    return u[first], v[first], d[first]
