"""The clustering engine interface: every command that groups faces goes through it.

An engine turns unit-normalised embeddings into integer labels, such that
  * two faces end in one cluster only if they are linked at cosine distance <= threshold
    (what "linked" means is the engine's linkage: average linkage for both engines here);
  * the cannot-link rule holds: the two faces of every ``cannot_link`` pair (e.g. two faces
    found in the same photo; see ``pairs_from_groups``) never share a label.
Labels are 0..K-1 with every face labelled (a singleton is a cluster of one) and are
numbered by cluster size, largest first (ties: smallest first index), so outputs are stable.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ClusterEngine(ABC):
    """Base class of clustering engines (exact, graph)."""

    name: str = "base"
    # the face pairs the last ``cluster_many`` could merge along, as (u, v) index arrays into
    # its embeddings: the graph engine's k-NN graph; None for an engine that looks at every
    # pair (exact). The centroid merge takes its candidate cluster pairs from them
    # (linkage.merge_centroids), so it needs no second neighbour search.
    edges: tuple[np.ndarray, np.ndarray] | None = None

    def cluster(self, embeddings: np.ndarray, threshold: float,
                cannot_link: np.ndarray | None = None) -> np.ndarray:
        """Cluster unit-normalised ``embeddings`` (N x D float32) at cosine ``threshold``.

        ``cannot_link``: optional (M, 2) int array of index pairs that must not share a
        cluster. Returns (N,) int64 labels.
        """
        return self.cluster_many(embeddings, [threshold], cannot_link)[0]

    @abstractmethod
    def cluster_many(self, embeddings: np.ndarray, thresholds: list[float],
                     cannot_link: np.ndarray | None = None) -> list[np.ndarray]:
        """``cluster`` at each of ``thresholds``, sharing the work between them (the
        dendrogram, the neighbour graph): calibrate's sweeps."""


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Unit-normalise rows as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..K-1 by cluster size descending, ties by first occurrence."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    uniq, first, inverse, counts = np.unique(labels, return_index=True,
                                             return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))  # primary: size desc, then first index
    new_id = np.empty(len(uniq), dtype=np.int64)
    new_id[order] = np.arange(len(uniq))
    return new_id[inverse.reshape(-1)]


def add_rows(target: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
    """``target[idx[i]] += rows[i]`` for every i, repeated indices adding up: what
    ``np.add.at(target, idx, rows)`` does, which is ~30x slower for 2-D rows (at a million
    faces it cost a minute), as is ``np.add.reduceat``. Here: one sparse (indices x rows)
    product, summed in ``rows``' dtype (float32 embeddings: ample for means of unit rows)."""
    import scipy.sparse as sp
    idx = np.asarray(idx, dtype=np.int64)
    if not len(idx):
        return
    uniq, inv = np.unique(idx, return_inverse=True)
    ones = np.ones(len(idx), dtype=rows.dtype)
    m = sp.csr_matrix((ones, (inv.reshape(-1), np.arange(len(idx)))), shape=(len(uniq), len(idx)))
    target[uniq] += m @ rows


def centroids(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit-normalised mean embedding of each label 0..K-1 (K x D), no N x N anywhere."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if labels.size else 0
    sums = np.zeros((k, embeddings.shape[1]), dtype=np.float64)
    add_rows(sums, labels, embeddings)
    return normalize_rows(sums.astype(np.float32))


def pairs_from_groups(groups: np.ndarray) -> np.ndarray:
    """Cannot-link pairs (M, 2) of every two items sharing a group id >= 0 (same photo)."""
    groups = np.asarray(groups)
    idx = np.flatnonzero(groups >= 0)
    if idx.size < 2:
        return np.zeros((0, 2), dtype=np.int64)
    order = idx[np.argsort(groups[idx], kind="stable")]
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(order)]
    out = []
    for s, e in zip(starts, ends):
        if e - s >= 2:
            a, b = np.triu_indices(e - s, k=1)
            out.append(np.stack([order[s:e][a], order[s:e][b]], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)


def violates_cannot_link(labels: np.ndarray, cannot_link: np.ndarray | None) -> bool:
    """True if the two items of any cannot-link pair share a label."""
    if cannot_link is None or len(cannot_link) == 0:
        return False
    labels = np.asarray(labels)
    pairs = np.asarray(cannot_link)
    return bool(np.any(labels[pairs[:, 0]] == labels[pairs[:, 1]]))
