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

import os
import threading

import numpy as np

from ..formats.cache import cache_exists, load_cache
from ..formats.manifest import ManifestError
from ..formats.swapset import cohesion_entry
from .thresholds import MODEL_THRESHOLDS, ThresholdError, resolve_threshold

SPLIT_SAMPLE = 64      # faces of a larger cluster the split is measured on (a fixed sample)
MIXED_RATIO = 0.95     # a cluster whose split is at least this x the cluster threshold is
                       # listed as likely to hold two people (docs/clustering.md)
FACESET_MIXED_RATIO = 0.95   # the same rule for a swap-ready faceset (its gated faces);
                             # tuned on lfw_dev A-F (docs/clustering.md)


def split_distances(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The split distance of every label (0 for a cluster of one face)."""
    from scipy.cluster.hierarchy import linkage
    from threadpoolctl import threadpool_limits

    from ..engine import normalize_rows   # here: the GPU workers' venv has no engine deps

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


# ---- the swap-ready faceset's figure (its manifest's ``cohesion``) ------------------------
_lookup_lock = threading.Lock()
_lookup: dict = {}     # the last cache read: {"id": (path, size, mtime), "found": ...}


def _cache_rows(cache_path) -> tuple[dict[str, int], np.ndarray, float | None] | None:
    """(face key -> row, embeddings, the cache's cluster threshold) of a cache, read once
    for a run of calls (export-swap finishes hundreds of facesets from one cache); None
    when it is gone or unreadable."""
    if not isinstance(cache_path, str) or not cache_path or not cache_exists(cache_path):
        return None
    try:
        st = os.stat(cache_path)
        ident = (os.path.abspath(cache_path), st.st_size, st.st_mtime_ns)
    except OSError:    # a segmented cache without its .npz: read it each time
        ident = None
    with _lookup_lock:
        if ident is not None and _lookup.get("id") == ident:
            return _lookup["found"]
        try:
            cache = load_cache(cache_path)
        except (OSError, ValueError, ManifestError):
            return None
        try:
            threshold = resolve_threshold("cluster", cache.meta, None)
        except ThresholdError:
            threshold = None
        found = ({k: r for r, k in enumerate(cache.face_keys().tolist())},
                 cache.faces["embedding"], threshold)
        if ident is not None:
            _lookup.update(id=ident, found=found)
        return found


def faceset_split(vectors: np.ndarray) -> float:
    """The split distance of one faceset's faces (0 for fewer than two)."""
    if len(vectors) < 2:
        return 0.0
    return float(split_distances(vectors, np.zeros(len(vectors), dtype=np.int64))[0])


def with_cohesion(body: dict) -> dict:
    """``body`` (a swap faceset manifest) with its ``cohesion`` measured on its kept faces,
    their embeddings read from the cache the body names, against the cache's cluster
    threshold (``_threshold_of`` when the model has none). When the embeddings cannot be
    had (cache gone, a face not in it) the field is removed: a figure of other faces would
    mislead."""
    faces = body["faces"]
    found = _cache_rows(body.get("cache"))
    if found is None or any(f["key"] not in found[0] for f in faces):
        body.pop("cohesion", None)
        return body
    rows, emb, threshold = found
    if threshold is None:
        threshold = _threshold_of(body)
    vectors = np.asarray(emb[[rows[f["key"]] for f in faces]], dtype=np.float32) \
        if faces else np.zeros((0, 1), np.float32)
    split = faceset_split(vectors)
    body["cohesion"] = cohesion_entry(split, len(faces), threshold,
                                      likely_mixed(split, threshold))
    return body


def _threshold_of(body: dict) -> float | None:
    """The cluster threshold a faceset was made at when its cache's model has none (flags
    given): scaled back from its export's outlier gate, else the one measured before."""
    gate = (body.get("parameters") or {}).get("outlier_threshold")
    if isinstance(gate, (int, float)) and not isinstance(gate, bool) and gate > 0:
        ref = MODEL_THRESHOLDS["buffalo_l"]
        cluster = round(float(gate) * ref["cluster"] / ref["swap_outlier"], 4)
        # a gate opened wide (e.g. 2.0: keep every face) says nothing of the threshold
        return cluster if cluster <= 2.0 else None
    before = (body.get("cohesion") or {}).get("threshold")
    return before if isinstance(before, (int, float)) else None


def likely_mixed(split: float, threshold: float | None) -> bool:
    """Whether a faceset likely holds two people: its split distance at least
    FACESET_MIXED_RATIO x the cluster threshold (never without a threshold)."""
    return threshold is not None and threshold > 0 and split >= FACESET_MIXED_RATIO * threshold
