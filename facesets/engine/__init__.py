"""Clustering engines behind one small interface (see base.ClusterEngine).

No command talks to scikit-learn, scipy's linkage or faiss directly: they call
``cluster_faces`` (and the helpers re-exported here).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from .assign import assign_nearest
from .base import (ClusterEngine, add_rows, centroids, normalize_rows, pairs_from_groups,
                   relabel_by_size, violates_cannot_link)
from .exact import ExactEngine
from .graph import GraphEngine
from .linkage import (CLUSTER_MERGE_RATIO, LINKAGES, attach_unreliable, merge_centroids,
                      mutual_smooth, sub_cannot_link)

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


def _sweep(eng: ClusterEngine, x: np.ndarray, thresholds: list[float],
           cannot_link: np.ndarray | None, linkage: str, unreliable: np.ndarray | None,
           merge_ratio: float = 0.0, engine: str = "auto") -> list[np.ndarray]:
    """The engine's clustering at each threshold under one linkage option, then the centroid
    merge at ``merge_ratio`` x threshold when > 0 (linkage.py), along the engine's own
    candidate pairs when it has them (the graph engine's k-NN graph)."""
    out, edges = _link(eng, x, thresholds, cannot_link, linkage, unreliable)
    if merge_ratio > 0:
        t0 = time.monotonic()

        def on_centroids(c, t, cl):
            return get_engine(engine, len(c)).cluster(c, t, cl)
        out = [merge_centroids(x, lab, merge_ratio * t, cannot_link, on_centroids, e)
               for lab, t, e in zip(out, thresholds, edges)]
        eng.timing = dict(getattr(eng, "timing", {}),
                          merge_s=round(time.monotonic() - t0, 2))
    return out


def _link(eng: ClusterEngine, x: np.ndarray, thresholds: list[float],
          cannot_link: np.ndarray | None, linkage: str, unreliable: np.ndarray | None
          ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray] | None]]:
    """Labels per threshold, and per threshold the face pairs (indices into ``x``) the
    engine linked along (None: every pair)."""
    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r}; choose from " + ", ".join(LINKAGES))
    if linkage == "mutual":
        out, edges = [], []
        for t in thresholds:
            out.append(eng.cluster(mutual_smooth(x, t), t, cannot_link))
            edges.append(eng.edges)
        return out, edges
    if linkage == "quality" and unreliable is not None and np.any(unreliable) \
            and not np.all(unreliable):
        n = len(x)
        rest = np.flatnonzero(unreliable)
        core = np.flatnonzero(~np.asarray(unreliable, dtype=bool))
        inner = eng.cluster_many(x[core], thresholds, sub_cannot_link(cannot_link, core, n))
        e = None if eng.edges is None else (core[eng.edges[0]], core[eng.edges[1]])
        return ([attach_unreliable(x, lab, core, rest, t, cannot_link)
                 for lab, t in zip(inner, thresholds)], [e] * len(thresholds))
    out = eng.cluster_many(x, thresholds, cannot_link)
    return out, [eng.edges] * len(thresholds)


def cluster_faces(embeddings: np.ndarray, threshold: float,
                  cannot_link: np.ndarray | None = None, engine: str = "auto",
                  progress: bool | None = None, timing: dict | None = None,
                  linkage: str = "average", unreliable: np.ndarray | None = None,
                  merge_ratio: float = 0.0) -> np.ndarray:
    """Cluster faces; labels numbered by size, largest first. See ClusterEngine.cluster.

    ``progress``: bars and a one-line phase timing summary on stderr (default: from
    PROGRESS_MIN_FACES faces on). ``timing``: a dict filled with the phase timings.
    ``linkage``: one of LINKAGES (linkage.py); ``quality`` needs ``unreliable`` (a bool per
    face, e.g. core.reliability.unreliable_faces), without it it is plain average linkage.
    ``merge_ratio`` > 0: then merge clusters whose centroids are within merge_ratio x
    threshold (linkage.merge_centroids).
    """
    x = normalize_rows(embeddings)
    if progress is None:
        progress = len(x) >= PROGRESS_MIN_FACES
    eng = get_engine(engine, len(x), progress=progress)
    t0 = time.monotonic()
    labels = _sweep(eng, x, [threshold], cannot_link, linkage, unreliable, merge_ratio,
                    engine)[0]
    phases = dict(getattr(eng, "timing", {}), engine=eng.name,
                  total_s=round(time.monotonic() - t0, 2))
    if linkage != "average":
        phases["linkage"] = linkage
    if merge_ratio > 0:
        phases["merge_ratio"] = merge_ratio
    if timing is not None:
        timing.update(phases)
    if progress:
        print("engine: " + ", ".join(f"{k} {v}" for k, v in phases.items()), file=sys.stderr,
              flush=True)
    return labels


def cluster_sweep(embeddings: np.ndarray, thresholds, cannot_link: np.ndarray | None = None,
                  engine: str = "auto", linkage: str = "average",
                  unreliable: np.ndarray | None = None,
                  merge_ratio: float = 0.0) -> list[np.ndarray]:
    """``cluster_faces`` at each of ``thresholds``, sharing the work (one dendrogram or one
    neighbour graph): what calibrate sweeps."""
    x = normalize_rows(embeddings)
    eng = get_engine(engine, len(x))
    return _sweep(eng, x, list(thresholds), cannot_link, linkage, unreliable, merge_ratio,
                  engine)


__all__ = ["add_rows", "assign_nearest", "ClusterEngine", "ENGINES", "LINKAGES",
           "CLUSTER_MERGE_RATIO", "merge_centroids", "EXACT_MAX_FACES", "GraphEngine",
           "get_engine", "cluster_faces", "cluster_sweep", "centroids", "normalize_rows",
           "pairs_from_groups", "relabel_by_size",
           "violates_cannot_link"]
