"""Exact average-linkage agglomerative clustering on cosine distance (the reference engine).

Needs the condensed N x N distance matrix (8 bytes per pair): fine for a few thousand faces,
too big past ~40k. The graph engine is the scalable one; this one is the reference it must
agree with.

Cannot-link: the distance of every cannot-link pair is set to a huge value before linkage.
Average linkage (UPGMA) is exact on any dissimilarity matrix, so the average distance
between two clusters that contain such a pair is at least BIG / (n1 * n2), far above any
threshold, while every other merge is computed exactly as without constraints. Cutting the
dendrogram at ``threshold`` therefore never joins two faces of one photo.
"""
from __future__ import annotations

import numpy as np

from .base import ClusterEngine, relabel_by_size

_BIG = 1e12  # >> threshold * N^2 for any N this engine can hold in memory


def cosine_condensed(embeddings: np.ndarray, block: int = 1024) -> np.ndarray:
    """Condensed cosine distance matrix of unit rows, float64: one matrix product per block
    of rows (BLAS), then each row's upper part copied out."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    pos = 0
    for s in range(0, n - 1, block):
        e = min(s + block, n - 1)
        sims = x[s:e] @ x[s:].T          # rows s..e-1 against columns s..n-1
        for r in range(e - s):
            row = sims[r, r + 1:]
            out[pos:pos + len(row)] = row
            pos += len(row)
    np.subtract(1.0, out, out=out)
    np.clip(out, 0.0, 2.0, out=out)
    return out


def _condensed_index(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    i, j = np.minimum(i, j), np.maximum(i, j)
    return n * i - i * (i + 1) // 2 + (j - i - 1)


def apply_cannot_link(dist: np.ndarray, n: int, cannot_link: np.ndarray | None) -> None:
    """Set the condensed distance of every cannot-link pair to a huge value."""
    if cannot_link is None or len(cannot_link) == 0:
        return
    pairs = np.asarray(cannot_link, dtype=np.int64)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    dist[_condensed_index(n, pairs[:, 0], pairs[:, 1])] = _BIG


class ExactEngine(ClusterEngine):
    """scipy average linkage over the full condensed matrix, cut at the threshold."""

    name = "exact"

    def cluster_many(self, embeddings, thresholds, cannot_link=None) -> list[np.ndarray]:
        """One dendrogram, cut at each threshold (calibrate's sweep)."""
        n = len(embeddings)
        if n < 2:
            return [np.zeros(n, dtype=np.int64) for _ in thresholds]
        # imported here: SciPy's import costs ~0.25 s at every CLI start otherwise
        from scipy.cluster.hierarchy import fcluster, linkage

        dist = cosine_condensed(embeddings)
        apply_cannot_link(dist, n, cannot_link)
        tree = linkage(dist, method="average")
        del dist
        return [relabel_by_size(fcluster(tree, t=float(t), criterion="distance"))
                for t in thresholds]
