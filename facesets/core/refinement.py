"""refine's stages on a face selection: cluster, merge over-split clusters by centroid,
quality gate, outlier removal. Shared by ``refine``, ``extend`` (growing facesets under
refine's recorded parameters) and ``calibrate`` (the merge sweep).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..engine import centroids, cluster_faces, merge_centroids
from ..formats.cache import FaceCache
from .selection import FaceSelection, groups_by_label


@dataclass
class RefineParams:
    initial_threshold: float
    merge_threshold: float
    outlier_threshold: float
    min_short: float = 90.0
    min_blur: float = 40.0
    min_det_score: float = 0.6
    min_faces: int = 15
    engine: str = "auto"


@dataclass
class Gated:
    """A face a gate took out of its identity: which gate, the face's value and the limit."""
    index: int            # position in the selection
    gate: str             # the drop reason: small, blurry, low_det_score, outlier
    value: float
    limit: float
    cluster: int          # its (merged) cluster before the gates


@dataclass
class RefineResult:
    labels: np.ndarray                       # final faceset per selected face, -1 = none
    dropped: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    gated: list[Gated] = field(default_factory=list)
    clusters: np.ndarray | None = None       # merged cluster of each face before the gates

    def gated_by_faceset(self) -> dict[int, list[Gated]]:
        """Final faceset -> the faces the quality and outlier gates took out of its
        cluster (faces of clusters that did not become a faceset are left out)."""
        if self.clusters is None:
            return {}
        final_of = {int(c): int(f) for c, f in zip(self.clusters, self.labels) if f >= 0}
        out: dict[int, list[Gated]] = {}
        for g in self.gated:
            if g.cluster in final_of:
                out.setdefault(final_of[g.cluster], []).append(g)
        return out


def merge_clusters(sel: FaceSelection, labels: np.ndarray, threshold: float,
                   engine: str = "auto") -> np.ndarray:
    """Merge clusters whose centroids are within ``threshold`` (cannot-link at cluster level)."""
    return merge_centroids(sel.embeddings, labels, threshold, sel.cannot_link(),
                           lambda c, t, cl: cluster_faces(c, t, cl, engine=engine))


# the quality gates: drop reason -> (cache column, RefineParams field)
QUALITY_GATES = {"small": ("face_short", "min_short"), "blurry": ("blur", "min_blur"),
                 "low_det_score": ("det_score", "min_det_score")}


# the flag that sets each gate (the summary names it when a gate takes many faces)
GATE_FLAGS = {"outlier": "--outlier-threshold", "small": "--min-short",
              "blurry": "--min-blur", "low_det_score": "--min-det-score"}


def quality_mask(cache: FaceCache, sel: FaceSelection, p: RefineParams) -> dict[str, np.ndarray]:
    """Per reason, the faces that fail the quality gate."""
    return {reason: cache.faces[col][sel.rows] < getattr(p, field)
            for reason, (col, field) in QUALITY_GATES.items()}


def outlier_mask(sel: FaceSelection, labels: np.ndarray, threshold: float,
                 min_size: int = 4) -> np.ndarray:
    """Faces farther than ``threshold`` from their cluster centroid, in clusters of 4+."""
    return outlier_gate(sel, labels, threshold, min_size)[0]


def outlier_gate(sel: FaceSelection, labels: np.ndarray, threshold: float,
                 min_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(the outlier mask, each face's distance from its cluster centroid; NaN outside a
    cluster)."""
    valid = labels >= 0
    out = np.zeros(len(labels), dtype=bool)
    dist_all = np.full(len(labels), np.nan)
    if not valid.any():
        return out, dist_all
    lab = labels[valid]
    cents = centroids(sel.embeddings[valid], lab)
    dist = 1.0 - np.einsum("ij,ij->i", sel.embeddings[valid], cents[lab])
    sizes = np.bincount(lab)
    out[np.flatnonzero(valid)] = (dist > threshold) & (sizes[lab] >= min_size)
    dist_all[np.flatnonzero(valid)] = dist
    return out, dist_all


def refine_labels(cache: FaceCache, sel: FaceSelection, p: RefineParams) -> RefineResult:
    """Run stages 1-5; returns the faceset label of each selected face (-1 = dropped)."""
    res = RefineResult(labels=np.full(len(sel), -1, dtype=np.int64))
    if len(sel) == 0:
        return res
    t = time.monotonic()
    labels = cluster_faces(sel.embeddings, p.initial_threshold, sel.cannot_link(), p.engine)
    res.timing["initial_s"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    labels = merge_clusters(sel, labels, p.merge_threshold, p.engine)
    res.timing["merge_s"] = round(time.monotonic() - t, 2)
    labels = labels.copy()
    res.clusters = labels.copy()
    for reason, mask in quality_mask(cache, sel, p).items():
        hit = mask & (labels >= 0)
        res.dropped[reason] = int(hit.sum())
        col, field_ = QUALITY_GATES[reason]
        res.gated += [Gated(int(i), reason, float(cache.faces[col][sel.rows[i]]),
                            float(getattr(p, field_)), int(labels[i]))
                      for i in np.flatnonzero(hit)]
        labels[hit] = -1
    out, dist = outlier_gate(sel, labels, p.outlier_threshold)
    res.dropped["outlier"] = int(out.sum())
    res.gated += [Gated(int(i), "outlier", float(dist[i]), float(p.outlier_threshold),
                        int(labels[i])) for i in np.flatnonzero(out)]
    labels[out] = -1
    # size filter on unique source images
    keep = np.zeros(len(labels), dtype=bool)
    small = 0
    for members in groups_by_label(np.where(labels >= 0, labels, labels.max() + 1)):
        if labels[members[0]] < 0:
            continue
        if len(set(sel.sha256[members].tolist())) >= p.min_faces:
            keep[members] = True
        else:
            small += len(members)
    res.dropped["too_few_images"] = small
    labels[~keep] = -1
    final = np.full(len(labels), -1, dtype=np.int64)
    if keep.any():
        # number by unique images, then faces (largest first)
        groups = groups_by_label(labels[keep])
        idx = np.flatnonzero(keep)
        sizes = [(-len(set(sel.sha256[idx[g]].tolist())), -len(g), int(idx[g].min()), n)
                 for n, g in enumerate(groups)]
        for new, (_, _, _, n) in enumerate(sorted(sizes)):
            final[idx[groups[n]]] = new
    res.labels = final
    return res
