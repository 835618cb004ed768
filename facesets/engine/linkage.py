"""Linkage options on top of an engine's average linkage (docs/clustering.md, "Linkage").

Each option is a layer around the engine (exact or graph), never a change inside it, so the
two engines still compute the same clustering with every option (tests/test_engine.py):

  average   plain average linkage on cosine distance (the reference).
  quality   quality-aware: faces whose embeddings are unreliable (small, blurry, low detector
            score, low embedding norm: ``unreliable``) take no part in the linkage, so they
            cannot bridge two identities; afterwards each joins the cluster it is nearest on
            average (mean cosine distance to its members <= threshold, and no face of its
            photo in it), else it stays alone.
  mutual    neighbourhood-aware: each face's embedding is averaged with those of its mutual
            near neighbours (each among the other's MUTUAL_K nearest, within the threshold),
            which pulls the photos of one person together before average linkage runs.

Independently of the linkage, ``merge_ratio`` > 0 adds a second stage (refine's merge): the
clusters whose unit centroids are within ``merge_ratio * threshold`` of each other merge
(average linkage on the centroids, no two clusters holding faces of one photo). Average
linkage alone leaves a large identity split in two when the two halves' mean distance is
above the threshold (a different hair style, a tournament's worth of photos); their centroids
are still close. Measured on lfw_dev in docs/clustering.md ("Linkage").
"""
from __future__ import annotations

import numpy as np

from .base import add_rows, normalize_rows, relabel_by_size

LINKAGES = ("average", "quality", "mutual")
# the centroid merge after average linkage that `cluster` and calibrate's cluster sweep use:
# at this ratio of the cluster threshold (refine has its own merge threshold). Measured on
# lfw_dev with bench/bench_quality.py (docs/clustering.md, "Linkage"): at cluster 0.58 recall
# at pairwise precision >= 0.995 goes from 0.970 (no merge) to 0.982 / 0.985 / 0.986 / 0.987
# at ratios 0.65 / 0.69 / 0.73 / 0.78, with the same precision at every threshold 0.55-0.62
CLUSTER_MERGE_RATIO = 0.78
MUTUAL_K = 10          # neighbours per face considered by ``mutual``
MUTUAL_WEIGHT = 1.0    # weight of the neighbours' mean against the face itself
ATTACH_CHUNK = 4096


def attach_unreliable(x: np.ndarray, core_labels: np.ndarray, core_idx: np.ndarray,
                      rest_idx: np.ndarray, threshold: float,
                      cannot_link: np.ndarray | None) -> np.ndarray:
    """Labels of all faces: ``core_idx`` keep ``core_labels``; each face of ``rest_idx``
    joins the core cluster with the smallest mean cosine distance to its members if that is
    <= ``threshold`` and no face of its photo (cannot-link) is in it; otherwise (and when two
    attached faces of one photo pick one cluster, the farther of them) it stays alone."""
    n = len(x)
    k = int(core_labels.max()) + 1 if len(core_labels) else 0
    labels = np.full(n, -1, dtype=np.int64)
    labels[core_idx] = core_labels
    if len(rest_idx) and k:
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)
        add_rows(sums, core_labels, x[core_idx])
        sizes = np.bincount(core_labels, minlength=k).astype(np.float64)
        pos = np.full(n, -1, dtype=np.int64)
        pos[rest_idx] = np.arange(len(rest_idx))
        banned = np.zeros((0, 2), dtype=np.int64)        # (rest position, core cluster)
        if cannot_link is not None and len(cannot_link):
            cl = np.asarray(cannot_link, dtype=np.int64)
            cl = np.concatenate([cl, cl[:, ::-1]])
            hit = (pos[cl[:, 0]] >= 0) & (labels[cl[:, 1]] >= 0)
            banned = np.stack([pos[cl[hit, 0]], labels[cl[hit, 1]]], axis=1)
        best = np.full(len(rest_idx), -1, dtype=np.int64)
        dist = np.full(len(rest_idx), np.inf)
        for s in range(0, len(rest_idx), ATTACH_CHUNK):
            sims = (x[rest_idx[s:s + ATTACH_CHUNK]].astype(np.float64) @ sums.T) / sizes
            b = banned[(banned[:, 0] >= s) & (banned[:, 0] < s + ATTACH_CHUNK)]
            sims[b[:, 0] - s, b[:, 1]] = -np.inf
            j = sims.argmax(axis=1)
            best[s:s + len(j)] = j
            dist[s:s + len(j)] = 1.0 - sims[np.arange(len(j)), j]
        ok = dist <= threshold
        # two faces of one photo never join one cluster: the nearer one does
        if cannot_link is not None and len(cannot_link):
            cl = np.asarray(cannot_link, dtype=np.int64)
            both = (pos[cl[:, 0]] >= 0) & (pos[cl[:, 1]] >= 0)
            pa, pb = pos[cl[both, 0]], pos[cl[both, 1]]
            clash = ok[pa] & ok[pb] & (best[pa] == best[pb])
            loser = np.where(dist[pa] <= dist[pb], pb, pa)[clash]
            ok[loser] = False
        labels[rest_idx[ok]] = best[ok]
    alone = labels < 0
    labels[alone] = k + np.arange(int(alone.sum()))
    return relabel_by_size(labels)


def merge_centroids(x: np.ndarray, labels: np.ndarray, threshold: float,
                    cannot_link: np.ndarray | None, cluster,
                    edges: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Merge clusters whose unit centroids are within ``threshold`` (average linkage on the
    centroids), cannot-link at cluster level.

    ``edges`` None: the centroids are clustered by ``cluster`` (the engine's
    ``cluster(embeddings, threshold, cannot_link)``), which considers every pair (exact) or
    searches the centroids' own neighbours (graph). ``edges`` (u, v), face pairs such as the
    graph engine's k-NN graph: only clusters joined by one of them are candidates. That
    needs no second neighbour search (at a million faces the search over the ~400k
    centroids cost a third of the run); a split identity's halves still share many face
    pairs within the cluster threshold (docs/clustering.md, "Linkage").
    """
    from .base import centroids
    k = int(labels.max()) + 1 if len(labels) else 0
    if k < 2:
        return labels
    cents = centroids(x, labels)
    pairs = np.asarray(cannot_link if cannot_link is not None else np.zeros((0, 2)),
                       dtype=np.int64)
    cl = np.stack([labels[pairs[:, 0]], labels[pairs[:, 1]]], axis=1) if len(pairs) \
        else np.zeros((0, 2), dtype=np.int64)
    cl = np.unique(np.sort(cl, axis=1), axis=0) if len(cl) else cl
    if edges is None:
        merged = cluster(cents, threshold, cl)
    else:
        from .graph import graph_average_linkage
        a, b = labels[edges[0]], labels[edges[1]]
        keys = np.unique(np.minimum(a, b) * k + np.maximum(a, b))
        cu, cv = keys // k, keys % k
        between = cu != cv
        cu, cv = cu[between], cv[between]
        cw = 1.0 - np.einsum("ij,ij->i", cents[cu], cents[cv], dtype=np.float64)
        merged, _ = graph_average_linkage(cents, cu, cv, cw.astype(np.float32), threshold, cl)
    return relabel_by_size(merged[labels])


def sub_cannot_link(cannot_link: np.ndarray | None, idx: np.ndarray, n: int) -> np.ndarray | None:
    """The cannot-link pairs among faces ``idx``, renumbered to positions in ``idx``."""
    if cannot_link is None or len(cannot_link) == 0:
        return cannot_link
    pos = np.full(n, -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx))
    cl = pos[np.asarray(cannot_link, dtype=np.int64)]
    return cl[(cl >= 0).all(axis=1)]


def mutual_smooth(x: np.ndarray, threshold: float, k: int = MUTUAL_K,
                  weight: float = MUTUAL_WEIGHT) -> np.ndarray:
    """Each unit row averaged with its mutual near neighbours within ``threshold``
    (exact k-NN for up to knn.FLAT_MAX_FACES faces, the cell search above), re-normalised."""
    from .knn import knn_edges
    n = len(x)
    u, v, d = knn_edges(x, k, threshold)
    if len(u) == 0:
        return x
    # knn_edges keeps a pair if either face found the other; mutual: both did. A face's own
    # k nearest are its k nearest among the pairs it is in (the others were found from the
    # other side, so they are no nearer)
    ends, dd = np.r_[u, v], np.r_[d, d]
    o = np.lexsort((dd, ends))
    start = np.r_[0, np.flatnonzero(np.diff(ends[o])) + 1]
    first = np.repeat(start, np.diff(np.r_[start, len(o)]))
    rank = np.empty(len(ends), dtype=np.int64)
    rank[o] = np.arange(len(o)) - first
    mutual = (rank[:len(u)] < k) & (rank[len(u):] < k)
    u, v, d = u[mutual], v[mutual], d[mutual]
    sums = np.zeros_like(x, dtype=np.float64)
    w = (1.0 - d).astype(np.float64)[:, None]
    add_rows(sums, u, w * x[v])
    add_rows(sums, v, w * x[u])
    deg = np.zeros(n)
    np.add.at(deg, u, w[:, 0])
    np.add.at(deg, v, w[:, 0])
    has = deg > 0
    out = x.astype(np.float64).copy()
    out[has] += weight * sums[has] / deg[has, None]
    return normalize_rows(out.astype(np.float32))
