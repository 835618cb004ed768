"""Thresholds estimated from a cache alone, for a model with no built-in thresholds and no
truth folders (``calibrate --estimate CACHE``; ``run`` does it by itself when it must).

Every face's nearest neighbour (faces of its own photo excluded) is either the same person
in another photo (faces of people seen twice or more: the *near mode* of the distances) or,
for a person seen once, a stranger (the *far mode*, at the distance at which this model's
strangers meet in a library of this size). The estimate reads both off a kernel density of
those distances (bandwidth BANDWIDTH):
  * cluster:  the stranger mode's lower edge, ``far peak - STRANGER_Z x its spread`` (the
              spread measured on its right side, above the peak, where no same-person pair
              lies; a half-normal fit), and never below the valley between the modes.
              Average linkage merges two groups when their *mean* distance is within the
              threshold; a stranger's mean distance to a group is at least its distance to the
              group's nearest face, so about STRANGER_TAIL of the strangers lie closer than
              the threshold to someone, and far fewer to a whole group;
  * initial:  = cluster (what calibrate finds, docs/clustering.md);
  * merge, candidate_match, extend: scaled from cluster by buffalo_l's ratios
              (core/thresholds.scaled), as for derived thresholds;
  * outlier, swap_outlier: as calibrate, the OUTLIER_QUANTILE / SWAP_QUANTILE of the faces'
              distances to their centroid, over the clusters of 4+ faces at the estimated
              cluster threshold (calibrate takes the correctly placed truth faces instead).
The estimate is refused, with one message asking for ``calibrate``, when it cannot be
made at all: fewer than MIN_FACES faces with a neighbour, or no second mode (every face has
a same-person neighbour, random-like embeddings, or modes closer than MIN_SEPARATION). When
two modes are there but cannot be trusted (a mode holding under MIN_MODE_SHARE of the faces,
or a valley whose density is over MAX_VALLEY_RATIO of the lower peak) it is UNSURE: it goes
on at the conservative end (``conservative_threshold``: splits rather than mixes), says so
and how to do better; a family library with no truth folders still gets sorted. Measured
against calibrate in docs/clustering.md ("Estimated thresholds").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.selection import select_faces
from ..core.thresholds import FLAGS, ThresholdError, scaled
from ..engine import centroids, cluster_faces
from ..engine.knn import knn_edges
from ..formats.cache import FaceCache, estimate_record
from ..runtime.program import program_name

METHOD = "nn-modes"
MIN_FACES = 100            # faces with a neighbour outside their own photo
MIN_MODE_SHARE = 0.05      # each mode holds at least this share of the faces
MIN_SEPARATION = 0.15      # cosine distance between the two peaks
MAX_VALLEY_RATIO = 0.5     # density at the valley / the lower peak
BANDWIDTH = 0.02           # kernel density bandwidth (cosine distance)
STRANGER_Z = 2.0           # the threshold sits this many spreads below the stranger peak
STRANGER_TAIL = 0.023      # the normal tail below STRANGER_Z (for the docs)
NEIGHBOURS = 16            # searched per face (faces of its own photo are then dropped)
OUTLIER_QUANTILE = 0.99
SWAP_QUANTILE = 0.95
GRID = np.round(np.arange(0.0, 2.0001, 0.005), 3)

# what `run` and the step commands need; the rest is derived (core/thresholds.derived)
ESTIMATED = ("cluster", "initial", "merge", "outlier", "swap_outlier", "candidate_match",
             "extend")


class EstimateError(ThresholdError):
    """The cache's distances do not show what an estimate needs: use calibrate."""


@dataclass
class Estimate:
    thresholds: dict[str, float]
    how: str                      # one line: how the cluster threshold was found
    faces: int                    # faces with a neighbour outside their photo
    stats: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)   # what `calibrate --estimate` prints

    def record(self) -> dict:
        """The meta["estimate"] body (formats/cache.py checks it on every read)."""
        return estimate_record(METHOD, self.how, self.faces, self.thresholds, self.stats)


def nearest_distances(embeddings: np.ndarray, sha256: np.ndarray) -> np.ndarray:
    """Each face's cosine distance to its nearest face in another photo (faces with none
    among their NEIGHBOURS nearest are left out)."""
    n = len(embeddings)
    u, v, d = knn_edges(embeddings, k=NEIGHBOURS)
    other = sha256[u] != sha256[v]
    u, v, d = u[other], v[other], d[other].astype(np.float64)
    best = np.full(n, np.inf)
    np.minimum.at(best, u, d)
    np.minimum.at(best, v, d)
    return best[np.isfinite(best)]


def density(d: np.ndarray) -> np.ndarray:
    """Gaussian kernel density of ``d`` on GRID (bandwidth BANDWIDTH), integrating to 1."""
    out = np.zeros(len(GRID))
    for s in range(0, len(d), 4096):   # O(len(d) x len(GRID)) in slices
        z = (GRID[None, :] - d[s:s + 4096, None]) / BANDWIDTH
        out += np.exp(-0.5 * z * z).sum(axis=0)
    return out / (len(d) * BANDWIDTH * math.sqrt(2 * math.pi))


def modes(d: np.ndarray) -> dict:
    """The near and far peaks of the density of ``d`` and the valley between them, with the
    checks' figures; raises EstimateError (the reason) when there are not two modes at all,
    and says in "unsure" why two modes that are there cannot be trusted (a shallow valley, a
    thin mode): the estimate then goes on at the conservative end."""
    dens = density(d)
    peaks = [i for i in range(1, len(GRID) - 1)
             if dens[i] >= dens[i - 1] and dens[i] > dens[i + 1]]
    if not peaks:
        raise EstimateError("the distances have no peak at all")
    top = max(peaks, key=lambda i: dens[i])
    # the other mode: the highest peak at least MIN_SEPARATION away from the top one
    others = [i for i in peaks if abs(GRID[i] - GRID[top]) >= MIN_SEPARATION - 1e-9]
    if not others:
        raise EstimateError(
            f"the nearest-neighbour distances have one mode only (at {GRID[top]:.2f}): no "
            "gap between same-person and stranger distances shows (too few people seen "
            "twice, too few strangers, or embeddings that do not separate people)")
    second = max(others, key=lambda i: dens[i])
    near, far = sorted((top, second))
    valley = near + int(np.argmin(dens[near:far + 1]))
    v = float(GRID[valley])
    near_share = float(np.mean(d < v))
    ratio = float(dens[valley] / min(dens[near], dens[far]))
    out = {"near_peak": float(GRID[near]), "far_peak": float(GRID[far]), "valley": v,
           "near_share": round(near_share, 4), "far_share": round(1 - near_share, 4),
           "valley_ratio": round(ratio, 4)}
    if min(near_share, 1 - near_share) < MIN_MODE_SHARE:
        out["unsure"] = (
            f"one of the two modes of the nearest-neighbour distances (at {out['near_peak']:.2f}"
            f" and {out['far_peak']:.2f}) holds only {min(near_share, 1 - near_share):.1%} of "
            f"the faces (at least {MIN_MODE_SHARE:.0%} trusted)")
    elif ratio > MAX_VALLEY_RATIO:
        out["unsure"] = (
            f"no clear valley between the same-person mode ({out['near_peak']:.2f}) and the "
            f"stranger mode ({out['far_peak']:.2f}) of the nearest-neighbour distances: the "
            f"density at {v:.2f} is {ratio:.0%} of the lower peak (at most "
            f"{MAX_VALLEY_RATIO:.0%} trusted)")
    return out


def conservative_threshold(m: dict, edge: float) -> float:
    """The cluster threshold of an unsure estimate: the strict end of what the two modes
    allow, the lower of the valley and the stranger edge, never below the same-person peak
    (below it most faces of one person would stay apart). Too strict splits a person over
    several facesets, which `consolidate` and review undo; too lenient mixes two people."""
    return max(m["near_peak"], min(m["valley"], edge))


def stranger_edge(d: np.ndarray, far_peak: float) -> tuple[float, float]:
    """(threshold, spread) from the stranger mode: its spread from the faces beyond its peak
    (half-normal: median deviation / 0.6745), the threshold STRANGER_Z spreads below it."""
    right = d[d > far_peak] - far_peak
    spread = float(np.median(right) / 0.6745) if len(right) >= 5 else BANDWIDTH * 2
    return far_peak - STRANGER_Z * spread, spread


def _ceil2(x: float) -> float:
    return math.ceil(x * 100 - 1e-9) / 100


def cluster_estimate(sel, cache_path: str) -> tuple[float, dict, np.ndarray, float, float]:
    """The estimated cluster threshold alone (what calibrate compares its pick with): (t,
    modes, distances, stranger edge, spread); EstimateError as ``estimate``."""
    try:
        d = nearest_distances(sel.embeddings, sel.sha256) if len(sel) >= 2 else np.zeros(0)
        if len(d) < MIN_FACES:
            raise EstimateError(f"only {len(d)} faces with a neighbour in another photo (at "
                                f"least {MIN_FACES} needed)")
        m = modes(d)
    except EstimateError as exc:
        raise EstimateError(refusal(cache_path, str(exc))) from None
    edge, spread = stranger_edge(d, m["far_peak"])
    t = round(conservative_threshold(m, edge) if m.get("unsure") else max(edge, m["valley"]), 3)
    return t, m, d, edge, spread


def estimate(cache: FaceCache, cache_path: str, engine: str = "auto") -> Estimate:
    """Every threshold ESTIMATED names, from the faces of ``cache`` alone (module docstring);
    EstimateError (one message, naming calibrate) when the estimate cannot be trusted."""
    sel = select_faces(cache)
    t, m, d, edge, spread = cluster_estimate(sel, cache_path)
    unsure = m.get("unsure", "")
    labels = cluster_faces(sel.embeddings, t, sel.cannot_link(), engine)
    dist = 1.0 - np.einsum("ij,ij->i", sel.embeddings, centroids(sel.embeddings, labels)[labels])
    big = np.bincount(labels)[labels] >= 4
    pool = dist[big]
    if len(pool) >= 10:
        outlier = _ceil2(float(np.quantile(pool, OUTLIER_QUANTILE)))
        swap = _ceil2(float(np.quantile(pool, SWAP_QUANTILE)))
        gates = (f"the {OUTLIER_QUANTILE:.0%} / {SWAP_QUANTILE:.0%} quantiles of the distance "
                 f"to the centroid of the {len(pool)} faces in groups of 4+ at {t}")
    elif unsure:   # a strict threshold leaves few groups: gates scaled as merge is
        outlier, swap = scaled("outlier", t), scaled("swap_outlier", t)
        gates = (f"scaled from cluster by buffalo_l's ratios (only {len(pool)} faces in "
                 f"groups of 4+ at {t})")
    else:
        raise EstimateError(refusal(cache_path, f"only {len(pool)} faces in groups of 4+ at "
                                    f"the estimated threshold {t} (at least 10 needed to "
                                    "place the outlier gates)"))
    th = {"cluster": t, "initial": t, "merge": scaled("merge", t), "outlier": outlier,
          "swap_outlier": swap, "candidate_match": scaled("candidate_match", t),
          "extend": scaled("extend", t)}
    if unsure:
        which = "UNSURE, the conservative end: min(valley, stranger edge)"
    else:
        which = "stranger peak - %g x spread" % STRANGER_Z if edge >= m["valley"] else "valley"
    how = (f"cluster {t} = {which}; nearest-neighbour distances of {len(d)} faces: "
           f"same-person peak {m['near_peak']:.2f}, valley {m['valley']:.2f}, stranger peak "
           f"{m['far_peak']:.2f} (spread {spread:.3f})")
    stats = dict(m, faces=int(len(d)), far_spread=round(spread, 4),
                 outlier_pool=int(len(pool)))
    lines = [
        f"nearest-neighbour distances of {len(d)} faces (faces of one photo excluded):",
        f"  same-person mode at {m['near_peak']:.2f} ({m['near_share']:.0%} of faces), "
        f"valley at {m['valley']:.2f} (density {m['valley_ratio']:.0%} of the lower peak), "
        f"stranger mode at {m['far_peak']:.2f} ({m['far_share']:.0%}), spread {spread:.3f}"]
    if unsure:
        lines += [
            f"  UNSURE: {unsure}",
            f"  cluster / initial {t}: went on at the conservative (high-precision) end, the "
            f"lower of the valley {m['valley']:.2f} and the stranger edge {edge:.3f} (never "
            f"below the same-person peak): expect one person split over several facesets "
            "rather than two people in one",
            f"  to do better: `{program_name()} calibrate {cache_path} TRUTH_ROOT --save` with "
            "a few people sorted by hand (one folder each, several photos), or add more "
            "photos (more people seen once make the stranger mode clear), or pass --threshold"]
    else:
        lines.append(f"  cluster / initial {t}: {which} (stranger peak {m['far_peak']:.2f} - "
                     f"{STRANGER_Z:g} x {spread:.3f} = {edge:.3f}, never below the valley)")
    lines += [
        f"  merge {th['merge']}, candidate_match / extend {th['extend']}: scaled from cluster "
        "by buffalo_l's ratios",
        f"  outlier {th['outlier']}, swap_outlier {th['swap_outlier']}: {gates}"]
    return Estimate(thresholds=th, how=how, faces=int(len(d)), stats=stats, lines=lines)


def refusal(cache_path: str, reason: str) -> str:
    """The one message of an estimate that cannot be trusted: why, and what to do."""
    flags = ", ".join(dict.fromkeys(FLAGS[n] for n in ESTIMATED if n != "extend"))
    return (f"{cache_path}: thresholds cannot be estimated from this cache's faces alone: "
            f"{reason}. Rather than guess, measure them: `{program_name()} calibrate {cache_path} "
            "TRUTH_ROOT --save` (TRUTH_ROOT: one folder of photos per person, a few people "
            f"with several photos each), or pass them ({flags})")
