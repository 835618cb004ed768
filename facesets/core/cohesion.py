"""Where a mix of two people is likely: each cluster's split distance.

The split distance of a cluster is the height of the root of its own average-linkage
dendrogram: the mean cosine distance between the two groups it falls into last. A cluster
of one person falls apart only at a same-person distance; two people glued together fall
apart at the distance between them, which is near the cluster threshold (they were joined
there). For two faces it is their distance. Measured on lfw_dev (docs/clustering.md, "Where
a mix is likely"): ranked by it, the top of the list holds the mixed clusters, where the old
review hint (faces far from their centroid) held none.
"""
from __future__ import annotations

import numpy as np

from ..engine import normalize_rows

SPLIT_SAMPLE = 64      # faces of a larger cluster the split is measured on (a fixed sample)
MIXED_RATIO = 0.95     # a cluster whose split is at least this x the cluster threshold is
                       # listed as likely to hold two people (docs/clustering.md)


def split_distances(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The split distance of every label (0 for a cluster of one face)."""
    from scipy.cluster.hierarchy import linkage
    from threadpoolctl import threadpool_limits

    x = normalize_rows(np.asarray(embeddings, dtype=np.float32))
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if len(labels) else 0
    out = np.zeros(k, dtype=np.float64)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pairs = np.flatnonzero(counts == 2)   # most clusters: one vectorised pass
    a, b = order[starts[pairs]], order[starts[pairs] + 1]
    out[pairs] = 1.0 - np.einsum("ij,ij->i", x[a], x[b])
    rng = np.random.default_rng(0)
    # thousands of tiny products: one BLAS thread each (threads cost more than the product;
    # measured 8x faster on 2 cores); threadpoolctl comes with scikit-learn
    with threadpool_limits(1):
        for c in np.flatnonzero(counts >= 3):
            rows = order[starts[c]:starts[c] + counts[c]]
            if len(rows) > SPLIT_SAMPLE:
                rows = np.sort(rng.choice(rows, SPLIT_SAMPLE, replace=False))
            d = np.clip(1.0 - x[rows] @ x[rows].T, 0.0, 2.0)
            iu = np.triu_indices(len(rows), 1)
            out[c] = float(linkage(d[iu].astype(np.float64), "average")[-1, 2])
    return out
