"""Scalable average linkage: reciprocal-nearest-neighbour merging on a sparse k-NN graph.

Why this is the same clustering as the exact engine (see docs/clustering.md):
  * Average linkage on cosine distance between unit vectors needs no distance matrix: the
    mean distance between clusters A and B is 1 - (S_A . S_B) / (n_A n_B), with S the sum of
    a cluster's embeddings. Every linkage here is computed that way, exactly.
  * Average linkage is reducible, so merging every pair of clusters that are each other's
    nearest neighbour in rounds (RAC, Sumengen et al. 2021) gives the same clusters as the
    one-merge-at-a-time dendrogram, cut at the threshold.
  * Two clusters can only reach average distance <= t if some face pair between them is
    within t, and a cluster edge above t can never come back below t through merging
    (the merged linkage is a weighted mean of the parts'). So only face pairs within t are
    needed as candidate edges, and cluster edges above t are dropped for good.
The one approximation is the candidate set: each face's k nearest neighbours (knn.py), not
every pair within t. Cannot-link pairs are cluster edges that are never merged (the exact
engine gives them a huge distance, which has the same effect).
"""
from __future__ import annotations

import time

import numpy as np

from ..runtime.progress import progress_bar
from .base import ClusterEngine, add_rows, relabel_by_size
from .knn import DEFAULT_K, knn_edges

LINKAGE_BATCH = 65536
# leaves join only a merging core of at least this many faces: there one more face moves the
# core's linkages by <= 1/size, so joining in the same round cannot change the outcome
# except within a hair of the threshold
LEAF_MIN_CORE = 16  # edges whose linkage is recomputed at once (rows of S gathered)


def _pair_keys(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(u, v) * n + np.maximum(u, v)


def _linkage(sums: np.ndarray, size: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Average cosine distance between clusters u and v from their embedding sums."""
    out = np.empty(len(u), dtype=np.float32)
    for s in range(0, len(u), LINKAGE_BATCH):
        e = slice(s, s + LINKAGE_BATCH)
        dots = np.einsum("ij,ij->i", sums[u[e]], sums[v[e]], dtype=np.float64)
        out[e] = 1.0 - dots / (size[u[e]] * size[v[e]])
    return out


def _best_neighbour(n: int, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Each node's nearest neighbour over the edges (ties: smallest id); n = none."""
    best = np.full(n, np.inf, dtype=np.float32)
    np.minimum.at(best, u, w)
    np.minimum.at(best, v, w)
    nb = np.full(n, n, dtype=np.int64)
    hit = w == best[u]
    np.minimum.at(nb, u[hit], v[hit])
    hit = w == best[v]
    np.minimum.at(nb, v[hit], u[hit])
    return nb


def _merges(n: int, nb: np.ndarray, sums: np.ndarray, size: np.ndarray, forbidden: np.ndarray,
            t: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """This round's merges as (into, joining) node arrays.

    Reciprocal nearest pairs merge (exact RAC). So do "leaves": clusters that are nobody's
    nearest neighbour join their own nearest neighbour's group in the same round, if they
    stay within ``t`` of the rest of that group. Without this a large identity absorbs its
    stragglers one per round (rounds ~ its size); with it, rounds ~ tree depth. A leaf that
    would put a cannot-link pair into one group waits for a later round.
    """
    ids = np.arange(n, dtype=np.int64)
    has = nb < n
    mutual = np.zeros(n, dtype=bool)
    mutual[has] = nb[nb[has]] == ids[has]
    pair_b = ids[mutual & (nb < ids)]          # the larger id of each mutual pair joins
    root = ids.copy()
    root[pair_b] = nb[pair_b]
    indeg = np.bincount(nb[has], minlength=n + 1)[:n]
    leaf = has & ~mutual & (indeg == 0)
    leaf[has] &= mutual[nb[has]]               # only into a core that merges this round...
    leaves = ids[leaf]
    core = nb[leaves]
    partner = nb[core]
    leaves = leaves[size[core] + size[partner] >= LEAF_MIN_CORE]  # ... and is large
    lroot = root[nb[leaves]]
    # guard: a leaf must be within t of the rest of its group (sums of whole groups first)
    joined = np.concatenate([pair_b, leaves])
    into = np.concatenate([root[pair_b], lroot])
    groups = np.unique(into)
    pos = np.searchsorted(groups, into)
    gsum = sums[groups].astype(np.float64)
    gsize = size[groups].copy()
    add_rows(gsum, pos, sums[joined])
    np.add.at(gsize, pos, size[joined])
    lpos = pos[len(pair_b):]
    rest_n = gsize[lpos] - size[leaves]
    rest_dot = np.einsum("ij,ij->i", gsum[lpos], sums[leaves]) - np.einsum(
        "ij,ij->i", sums[leaves], sums[leaves], dtype=np.float64)
    ok = 1.0 - rest_dot / (rest_n * size[leaves]) <= t
    # ... and of the group's core (the target and its mutual partner), so that leaves do not
    # carry each other in: each would also join the core alone
    core = nb[leaves]
    partner = nb[core]
    csum = sums[core].astype(np.float64) + sums[partner]
    csize = size[core] + size[partner]
    ok &= 1.0 - np.einsum("ij,ij->i", csum, sums[leaves]) / (csize * size[leaves]) <= t
    leaves, lroot = leaves[ok], lroot[ok]
    a = np.concatenate([root[pair_b], lroot])
    b = np.concatenate([pair_b, leaves])
    if len(forbidden) and len(b):
        a, b = _drop_conflicts(n, a, b, len(pair_b), forbidden)
    return a, b


def _drop_conflicts(n: int, a: np.ndarray, b: np.ndarray, n_pairs: int,
                    forbidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove joining leaves (never mutual pairs: their edge is not forbidden) until no
    cannot-link pair ends in one group."""
    while True:
        remap = np.arange(n, dtype=np.int64)
        remap[b] = a
        f0, f1 = forbidden // n, forbidden % n
        clash = remap[f0] == remap[f1]
        if not clash.any():
            return a, b
        bad = np.unique(np.concatenate([f0[clash], f1[clash]]))
        drop = np.isin(b, bad)
        drop[:n_pairs] = False
        if not drop.any():  # cannot happen: a mutual pair's own edge is never forbidden
            raise AssertionError("cannot-link clash between mutual pairs")
        a, b = a[~drop], b[~drop]


def graph_average_linkage(x: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray,
                          threshold: float, cannot_link: np.ndarray | None = None,
                          progress: bool = False) -> tuple[np.ndarray, int]:
    """Average-linkage clusters at ``threshold`` of unit rows ``x``, merging only along the
    candidate edges (u, v, distance). Returns (cluster id per row, number of rounds)."""
    n = len(x)
    t = np.float32(threshold)
    sums = np.array(x, dtype=np.float32, copy=True)
    size = np.ones(n, dtype=np.float64)
    parent = np.arange(n, dtype=np.int64)
    keep = w <= t
    u, v, w = u[keep].astype(np.int64), v[keep].astype(np.int64), w[keep].astype(np.float32)
    forbidden = np.zeros(0, dtype=np.int64)
    if cannot_link is not None and len(cannot_link):
        cl = np.asarray(cannot_link, dtype=np.int64)
        cl = cl[cl[:, 0] != cl[:, 1]]
        forbidden = np.unique(_pair_keys(cl[:, 0], cl[:, 1], n))
        ok = ~np.isin(_pair_keys(u, v, n), forbidden)
        u, v, w = u[ok], v[ok], w[ok]
    bar = progress_bar(total=len(u), desc="clustering", unit="edge", disable=not progress,
                       leave=False)
    rounds = 0
    while len(u):
        rounds += 1
        nb = _best_neighbour(n, u, v, w)
        a, b = _merges(n, nb, sums, size, forbidden, t)   # b joins a
        sums_b, size_b = sums[b], size[b]
        add_rows(sums, a, sums_b)
        np.add.at(size, a, size_b)
        parent[b] = a
        remap = np.arange(n, dtype=np.int64)
        remap[b] = a
        touched = np.zeros(n, dtype=bool)
        touched[a] = touched[b] = True
        before = len(u)
        aff = touched[u] | touched[v]
        au, av = remap[u[aff]], remap[v[aff]]
        keys = np.unique(_pair_keys(au, av, n)[au != av])
        if len(forbidden):
            f0, f1 = remap[forbidden // n], remap[forbidden % n]
            forbidden = np.unique(_pair_keys(f0, f1, n))
            keys = keys[~np.isin(keys, forbidden, assume_unique=True)]
        nu, nv = keys // n, keys % n
        nw = _linkage(sums, size, nu, nv)
        ok = nw <= t
        u = np.concatenate([u[~aff], nu[ok]])
        v = np.concatenate([v[~aff], nv[ok]])
        w = np.concatenate([w[~aff], nw[ok]])
        bar.update(before - len(u))
        bar.set_postfix(round=rounds, merged=len(a))
    bar.close()
    # follow merges to the surviving root
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            break
        parent = up
    return parent, rounds


class GraphEngine(ClusterEngine):
    """k-NN graph (faiss) + exact average linkage along its edges (RAC)."""

    name = "graph"

    def __init__(self, k: int = DEFAULT_K, search: str = "auto", progress: bool = False):
        self.k = k
        self.search = search
        self.progress = progress
        self.timing: dict[str, float] = {}
        self.edges = None

    def cluster_many(self, embeddings, thresholds, cannot_link=None) -> list[np.ndarray]:
        """One neighbour graph (at the largest threshold), clustered at each threshold."""
        n = len(embeddings)
        if n < 2:
            self.edges = (np.zeros(0, dtype=np.int64),) * 2
            return [np.zeros(n, dtype=np.int64) for _ in thresholds]
        t0 = time.monotonic()
        u, v, d = knn_edges(embeddings, self.k, float(max(thresholds)), self.search,
                            self.progress)
        t1 = time.monotonic()
        self.edges = (u, v)
        out, rounds = [], 0
        for t in thresholds:
            roots, r = graph_average_linkage(embeddings, u, v, d, t, cannot_link, self.progress)
            out.append(relabel_by_size(roots))
            rounds += r
        self.timing = {"neighbours_s": round(t1 - t0, 2),
                       "clustering_s": round(time.monotonic() - t1, 2),
                       "edges": int(len(u)), "rounds": rounds}
        return out
