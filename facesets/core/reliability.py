"""Which faces' embeddings are unreliable (quality-aware linkage, engine/linkage.py).

A face is unreliable when it is small, blurry, found with a low detector score, or its raw
embedding norm is low against the selection's median (for ArcFace-type recognizers the norm
tracks how confident the model is about the face). Such faces still get clustered, but
they do not decide merges: they join a cluster afterwards (engine/linkage.py, ``quality``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats.cache import FaceCache
from .selection import FaceSelection


@dataclass(frozen=True)
class ReliabilityGates:
    min_short: float = 0.0          # bbox short edge, original pixels
    min_blur: float = 0.0           # variance of the Laplacian (docs/cache-format.md)
    min_det_score: float = 0.0
    min_norm_ratio: float = 0.0     # raw embedding norm / the selection's median norm


# measured on lfw_dev with bench/bench_quality.py (docs/clustering.md, "Linkage")
DEFAULT_GATES = ReliabilityGates()


def face_signals(cache: FaceCache, sel: FaceSelection) -> dict[str, np.ndarray]:
    """Per selected face: short edge, blur, det score and norm ratio."""
    f = cache.faces
    r = sel.rows
    norm = np.linalg.norm(np.asarray(f["embedding"][r], dtype=np.float32), axis=1)
    med = float(np.median(norm)) if len(norm) else 1.0
    return {"short": np.asarray(f["face_short"][r], dtype=np.float32),
            "blur": np.asarray(f["blur"][r], dtype=np.float32),
            "det_score": np.asarray(f["det_score"][r], dtype=np.float32),
            "norm_ratio": norm / (med or 1.0)}


def unreliable_faces(cache: FaceCache, sel: FaceSelection,
                     gates: ReliabilityGates = DEFAULT_GATES) -> np.ndarray:
    """Bool per selected face: fails any of ``gates``."""
    s = face_signals(cache, sel)
    return unreliable_from_signals(s, gates)


def unreliable_from_signals(s: dict[str, np.ndarray], gates: ReliabilityGates) -> np.ndarray:
    return ((s["short"] < gates.min_short) | (s["blur"] < gates.min_blur)
            | (s["det_score"] < gates.min_det_score) | (s["norm_ratio"] < gates.min_norm_ratio))
