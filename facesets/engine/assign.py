"""Nearest-centroid assignment (extend, candidates): chunked, never N x K at once."""
from __future__ import annotations

import numpy as np


def assign_nearest(embeddings: np.ndarray, centroids: np.ndarray, threshold: float,
                   chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid for each unit embedding, -1 when farther than
    ``threshold`` (cosine distance); returns (index, distance)."""
    n = len(embeddings)
    idx = np.full(n, -1, dtype=np.int64)
    dist = np.full(n, np.inf, dtype=np.float32)
    if n == 0 or len(centroids) == 0:
        return idx, dist
    c = np.asarray(centroids, dtype=np.float32)
    for s in range(0, n, chunk):
        sims = np.asarray(embeddings[s:s + chunk], dtype=np.float32) @ c.T
        best = sims.argmax(axis=1)
        d = 1.0 - sims[np.arange(len(best)), best]
        dist[s:s + chunk] = d
        idx[s:s + chunk] = np.where(d <= threshold, best, -1)
    return idx, dist
