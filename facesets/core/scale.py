"""Pairwise precision predicted at the library's size, from a small truth set and the cache.

A calibration on a few hand-sorted people measures precision among those people only; in
the library every person has many more strangers to be confused with, so precision falls
as the library grows (docs/clustering.md, "Calibration at library scale"). The model:

  * stranger links: the probability ``p(t)`` that two faces of two different people are
    within ``t``, from the truth set's cross-person face pairs. Its lower tail is where the
    library's false links come from and where a small truth set has few pairs, so below the
    TAIL_PAIRS-th smallest cross-person distance it is an exponential tail fitted to those
    pairs (maximum likelihood: rate = 1 / mean gap to the TAIL_PAIRS-th); log-concave tails
    (a normal one) fall faster than that, so the extrapolation errs on the safe side;
  * the library: N faces hold about N^2 / 2 face pairs, nearly all of them strangers, so
    ``S(t) = p(t) N^2 / 2`` stranger pairs lie within ``t``; the cache's own nearest
    neighbours count every face pair within ``t`` (``E(t)``, NEIGHBOURS per face, faces of
    one photo excluded), so ``E(t) - S(t)`` are same-person pairs;
  * clustering: a close stranger pair ends inside one cluster with probability
    STRANGER_LINK_SHARE (average linkage needs a group's *mean* distance within ``t``;
    measured below), a close same-person pair brings about one true pair; predicted
    pairwise precision = same / (same + STRANGER_LINK_SHARE x S).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..engine import normalize_rows
from ..engine.knn import flat_index, knn_edges

TAIL_PAIRS = 50            # cross-person pairs the exponential tail is fitted to
NEIGHBOURS = 32            # library neighbours searched per face for E(t)
EXACT_LINKS = 20_000       # a later check counts every face's neighbours up to this size,
LINK_SAMPLE = 1_000        # else those of this many random faces (one flat search of them
                           # against a million 512-D faces: ~1 TFLOP, 10-20 s on 2 cores)
# share of the stranger face pairs within t that end inside one cluster (average linkage +
# the centroid merge), measured on lfw_dev (every person labelled): 0.41 at 0.54, 0.21 at
# 0.58, 0.17 at 0.60, 0.14 at 0.62 (docs/clustering.md); 0.2 is that of the operating range
STRANGER_LINK_SHARE = 0.2
_BLOCK = 1024


@dataclass
class StrangerTail:
    """The lower tail of the truth set's cross-person face-pair distances."""
    pairs: int                 # cross-person pairs measured
    lowest: np.ndarray         # their TAIL_PAIRS smallest distances, sorted
    at: np.ndarray             # thresholds (ascending) ...
    counts: np.ndarray         # ... and how many cross-person pairs lie within each

    @property
    def rate(self) -> float:
        """Exponential tail rate (per unit of distance) below ``lowest[-1]``."""
        gaps = self.lowest[-1] - self.lowest[:-1]
        return 1.0 / max(float(np.mean(gaps)), 1e-6) if len(gaps) else 0.0

    def probability(self, t: float) -> float:
        """p(t): share of cross-person pairs within ``t`` (module docstring)."""
        if not self.pairs or not len(self.lowest):
            return 0.0
        top = float(self.lowest[-1])
        if t >= top:   # measured: the tail's top and the exact counts at ``at`` above it
            above = self.at > top
            return float(np.interp(t, np.r_[top, self.at[above]],
                                   np.r_[len(self.lowest), self.counts[above]])) / self.pairs
        return len(self.lowest) * math.exp(self.rate * (t - top)) / self.pairs

    def record(self) -> dict:
        return {"pairs": int(self.pairs), "tail_pairs": int(len(self.lowest)),
                "tail_top": round(float(self.lowest[-1]), 4) if len(self.lowest) else 0.0,
                "tail_rate": round(self.rate, 3)}


def stranger_tail(embeddings: np.ndarray, labels: np.ndarray, grid) -> StrangerTail:
    """The cross-person distance tail of the truth faces (``labels``: person of each row),
    with the exact count within each threshold of ``grid``; blocks, no N x N matrix."""
    x = normalize_rows(np.asarray(embeddings, dtype=np.float32))
    labels = np.asarray(labels)
    grid = np.asarray(sorted(grid), dtype=np.float64)
    counts = np.zeros(len(grid), dtype=np.int64)
    lowest = np.zeros(0, dtype=np.float64)
    pairs = 0
    for s in range(0, len(x), _BLOCK):
        d = 1.0 - x[s:s + _BLOCK] @ x[s:].T
        rows = np.arange(s, min(s + _BLOCK, len(x)))[:, None]
        keep = (rows < np.arange(s, len(x))[None, :]) & \
            (labels[s:s + _BLOCK, None] != labels[None, s:])
        d = d[keep].astype(np.float64)
        pairs += len(d)
        d.sort()
        counts += np.searchsorted(d, grid, side="right")
        lowest = np.sort(np.r_[lowest, d[:TAIL_PAIRS]])[:TAIL_PAIRS]
    return StrangerTail(pairs=pairs, lowest=lowest, at=grid, counts=counts)


def library_links(embeddings: np.ndarray, sha256: np.ndarray, grid) -> np.ndarray:
    """E(t): face pairs of the library within each threshold of ``grid`` (ascending), over
    every face's NEIGHBOURS nearest (faces of one photo never pair)."""
    u, v, d = knn_edges(normalize_rows(np.asarray(embeddings, dtype=np.float32)),
                        k=NEIGHBOURS, max_dist=float(max(grid)))
    d = np.sort(d[sha256[u] != sha256[v]])
    return np.searchsorted(d, np.asarray(grid), side="right")


def links_within(embeddings: np.ndarray, sha256: np.ndarray, t: float,
                 sample: int = LINK_SAMPLE, seed: int = 0) -> int:
    """E(t) at one threshold for a later check (steps/calibrate.drift_warning): exact up to
    EXACT_LINKS faces, else the neighbours within ``t`` of ``sample`` random faces, scaled
    to the library (each pair has two ends)."""
    n = len(embeddings)
    if n <= max(EXACT_LINKS, sample):
        return int(library_links(embeddings, sha256, [t])[0])
    x = normalize_rows(np.asarray(embeddings, dtype=np.float32))
    rows = np.random.default_rng(seed).choice(n, size=sample, replace=False)
    index = flat_index(x)
    sims, nbrs = index.search(np.ascontiguousarray(x[rows]), NEIGHBOURS + 1)
    near = (1.0 - sims <= t) & (nbrs >= 0) & (nbrs != rows[:, None])
    near &= sha256[np.maximum(nbrs, 0)] != sha256[rows][:, None]
    return int(round(near.sum() * n / sample / 2))


def predicted_precision(tail: StrangerTail, library_faces: int, links: int,
                        t: float) -> float:
    """Pairwise precision predicted for a library of ``library_faces`` faces with ``links``
    face pairs within ``t`` (module docstring)."""
    return precision_from(tail.probability(t), library_faces, links)


def precision_from(stranger_p: float, library_faces: int, links: int) -> float:
    """The prediction from p(t) itself (what calibrate --save records for later checks)."""
    strangers = stranger_p * library_faces * (library_faces - 1) / 2
    same = max(links - strangers, 0.0)
    false = STRANGER_LINK_SHARE * strangers
    return same / (same + false) if same + false > 0 else 1.0
