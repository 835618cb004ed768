"""Clustering engines behind one small interface (see base.ClusterEngine).

No command talks to scikit-learn, scipy's linkage or faiss directly: they call
``cluster_faces`` (and the helpers re-exported here).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from .assign import assign_nearest
from .base import (ClusterEngine, centroids, normalize_rows, pairs_from_groups, relabel_by_size,
                   violates_cannot_link)
from .exact import ExactEngine
from .graph import GraphEngine

ENGINES: dict[str, type[ClusterEngine]] = {"exact": ExactEngine, "graph": GraphEngine}

# auto picks exact up to this many faces (its condensed matrix is 8 bytes per pair; the
# graph engine is faster above a few thousand: docs/clustering.md)
EXACT_MAX_FACES = 5000
# progress bars and the phase timing line are shown from this many faces on
PROGRESS_MIN_FACES = 50000


def get_engine(name: str = "auto", n_faces: int = 0, **options) -> ClusterEngine:
    """Return an engine instance by name; ``auto`` chooses by the number of faces.
    ``options`` go to the engine's constructor (e.g. ``progress`` for the graph engine)."""
    if name == "auto":
        name = "exact" if n_faces <= EXACT_MAX_FACES or "graph" not in ENGINES else "graph"
    try:
        cls = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown clustering engine {name!r}; choose from auto, "
                         + ", ".join(sorted(ENGINES))) from None
    return cls(**options) if name == "graph" else cls()


def cluster_faces(embeddings: np.ndarray, threshold: float,
                  cannot_link: np.ndarray | None = None, engine: str = "auto",
                  progress: bool | None = None, timing: dict | None = None) -> np.ndarray:
    """Cluster faces; labels numbered by size, largest first. See ClusterEngine.cluster.

    ``progress``: bars and a one-line phase timing summary on stderr (default: from
    PROGRESS_MIN_FACES faces on). ``timing``: a dict filled with the phase timings.
    """
    x = normalize_rows(embeddings)
    if progress is None:
        progress = len(x) >= PROGRESS_MIN_FACES
    eng = get_engine(engine, len(x), progress=progress)
    t0 = time.monotonic()
    labels = eng.cluster(x, threshold, cannot_link)
    phases = dict(getattr(eng, "timing", {}), engine=eng.name,
                  total_s=round(time.monotonic() - t0, 2))
    if timing is not None:
        timing.update(phases)
    if progress:
        print("engine: " + ", ".join(f"{k} {v}" for k, v in phases.items()), file=sys.stderr,
              flush=True)
    return labels


def cluster_sweep(embeddings: np.ndarray, thresholds, cannot_link: np.ndarray | None = None,
                  engine: str = "auto") -> list[np.ndarray]:
    """``cluster_faces`` at each of ``thresholds``, sharing the work (one dendrogram or one
    neighbour graph): what calibrate sweeps."""
    x = normalize_rows(embeddings)
    eng = get_engine(engine, len(x))
    many = getattr(eng, "cluster_many", None)
    if many is None:
        return [eng.cluster(x, t, cannot_link) for t in thresholds]
    return many(x, list(thresholds), cannot_link)


__all__ = ["assign_nearest", "ClusterEngine", "ENGINES", "EXACT_MAX_FACES", "GraphEngine",
           "get_engine", "cluster_faces", "cluster_sweep", "centroids", "normalize_rows",
           "pairs_from_groups", "relabel_by_size",
           "violates_cannot_link"]
