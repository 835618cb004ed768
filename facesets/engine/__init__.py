"""Clustering engines behind one small interface (see base.ClusterEngine).

No command talks to scikit-learn, scipy's linkage or faiss directly: they call
``cluster_faces`` (and the helpers re-exported here).
"""
from __future__ import annotations

import numpy as np

from .base import (ClusterEngine, centroids, normalize_rows, pairs_from_groups, relabel_by_size,
                   violates_cannot_link)
from .assign import assign_nearest
from .exact import ExactEngine

ENGINES: dict[str, type[ClusterEngine]] = {"exact": ExactEngine}

# auto picks exact up to this many faces (its condensed matrix is 8 bytes per pair)
EXACT_MAX_FACES = 20000


def get_engine(name: str = "auto", n_faces: int = 0) -> ClusterEngine:
    """Return an engine instance by name; ``auto`` chooses by the number of faces."""
    if name == "auto":
        name = "exact" if n_faces <= EXACT_MAX_FACES or "graph" not in ENGINES else "graph"
    try:
        return ENGINES[name]()
    except KeyError:
        raise ValueError(f"unknown clustering engine {name!r}; choose from auto, "
                         + ", ".join(sorted(ENGINES))) from None


def cluster_faces(embeddings: np.ndarray, threshold: float,
                  cannot_link: np.ndarray | None = None, engine: str = "auto") -> np.ndarray:
    """Cluster faces; labels numbered by size, largest first. See ClusterEngine.cluster."""
    x = normalize_rows(embeddings)
    return get_engine(engine, len(x)).cluster(x, threshold, cannot_link)


__all__ = ["assign_nearest", "ClusterEngine", "ENGINES", "EXACT_MAX_FACES", "get_engine", "cluster_faces",
           "centroids", "normalize_rows", "pairs_from_groups", "relabel_by_size",
           "violates_cannot_link"]
