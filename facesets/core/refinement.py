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
class RefineResult:
    labels: np.ndarray                       # final faceset per selected face, -1 = none
    dropped: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


def merge_clusters(sel: FaceSelection, labels: np.ndarray, threshold: float,
                   engine: str = "auto") -> np.ndarray:
    """Merge clusters whose centroids are within ``threshold`` (cannot-link at cluster level)."""
    return merge_centroids(sel.embeddings, labels, threshold, sel.cannot_link(),
                           lambda c, t, cl: cluster_faces(c, t, cl, engine=engine))


def quality_mask(cache: FaceCache, sel: FaceSelection, p: RefineParams) -> dict[str, np.ndarray]:
    """Per reason, the faces that fail the quality gate."""
    f = cache.faces
    r = sel.rows
    return {"small": f["face_short"][r] < p.min_short,
            "blurry": f["blur"][r] < p.min_blur,
            "low_det_score": f["det_score"][r] < p.min_det_score}


def outlier_mask(sel: FaceSelection, labels: np.ndarray, threshold: float,
                 min_size: int = 4) -> np.ndarray:
    """Faces farther than ``threshold`` from their cluster centroid, in clusters of 4+."""
    valid = labels >= 0
    out = np.zeros(len(labels), dtype=bool)
    if not valid.any():
        return out
    lab = labels[valid]
    cents = centroids(sel.embeddings[valid], lab)
    dist = 1.0 - np.einsum("ij,ij->i", sel.embeddings[valid], cents[lab])
    sizes = np.bincount(lab)
    out[np.flatnonzero(valid)] = (dist > threshold) & (sizes[lab] >= min_size)
    return out


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
    for reason, mask in quality_mask(cache, sel, p).items():
        hit = mask & (labels >= 0)
        res.dropped[reason] = int(hit.sum())
        labels[hit] = -1
    out = outlier_mask(sel, labels, p.outlier_threshold)
    res.dropped["outlier"] = int(out.sum())
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
