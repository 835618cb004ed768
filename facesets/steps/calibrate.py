"""``calibrate``: thresholds for this cache's model, measured on the user's own sorted folders.

Over the cached faces of the truth photos (truth.py: one folder per person, the face nearest
the centre scored) it sweeps
  * cluster:  the cluster threshold (the engine's average linkage, cannot-link honoured, then
              the centroid merge at ``merge_ratio`` x threshold, as `cluster` does), scored with
              pairwise and BCubed P/R/F. Best F: the best mean of the two F, at the strict
              end of the plateau of thresholds within PLATEAU of the best. Strict, because
              the library holds many more people than the truth folders, and every extra
              person is another chance of a false merge at a lenient threshold.
              Recommended (``target_precision``, default TARGET_PRECISION): the highest
              threshold, no more lenient than the best-F one, whose pairwise precision is at
              least the target plus a margin for the truth set's size: one binomial standard
              error of a precision measured on n faces, sqrt(target (1 - target) / n), n the
              truth faces in clusters of two or more at that threshold (0.0032 at 500 faces,
              0.0008 at 7,000). If no threshold clears the margin, the highest one whose
              precision reaches the bare target (said so in the notes); if none does, the
              strictest. Then the library's size counts: each row's precision is predicted
              for the whole cache (core/scale.py; ``predict_library``) and the pick is
              lowered to the highest row predicted at the target (``library_pick``: says why,
              and why when above the cache-only estimate). ``target_precision`` 0
              recommends the best-F threshold;
  * initial + merge: refine's stage 1 at thresholds up to the cluster one, then its centroid
              merge over a grid; the best F after merging (ties: the larger initial), at the
              middle of the merge plateau (merging exists to undo over-splits);
and derives from the faces that refine places correctly (in clusters of 4+; at least
MIN_GATE_FACES of them, else neither gate is recommended nor saved, with a warning)
  * outlier:       the OUTLIER_QUANTILE of their distances to their cluster centroid (refine
                   then drops about 1% of good faces, in clusters of 4+);
  * swap_outlier:  the SWAP_QUANTILE of the same distances (export-swap wants cleaner sets);
  * extend, candidate_match: a face joins the nearest person centroid within this distance;
                   swept with leave-one-out centroids of the truth people (a face of a
                   person seen once should stay out), best F of right joins, strict end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.metrics import Scores, bcubed_scores, pairwise_scores
from ..core.refinement import merge_clusters
from ..core.scale import (StrangerTail, library_links, links_within, precision_from,
                          predicted_precision, stranger_tail)
from ..core.selection import FaceSelection, select_faces, subset
from ..core.truth import TruthSet, load_truth
from ..engine import CLUSTER_MERGE_RATIO, add_rows, centroids, cluster_sweep, normalize_rows
from ..formats.cache import FaceCache, calibration_scale
from ..runtime.program import program_name

CLUSTER_GRID = tuple(np.round(np.arange(0.20, 1.0001, 0.025), 3))
MERGE_GRID = tuple(np.round(np.arange(0.10, 0.8001, 0.025), 3))
ASSIGN_GRID = tuple(np.round(np.arange(0.10, 1.0001, 0.025), 3))
PLATEAU = 0.002
TARGET_PRECISION = 0.995
OUTLIER_QUANTILE = 0.99
SWAP_QUANTILE = 0.95
# correctly placed truth faces needed to place the outlier gates: a 99th percentile of fewer
# is the largest distance or near it (issue 22: 4 people x 5 photos gave a gate that dropped
# 23% of rightly clustered photos), so the gates are then not recommended nor saved
MIN_GATE_FACES = 100


@dataclass
class SweepRow:
    threshold: float
    pairwise: Scores
    bcubed: Scores
    clusters: int
    grouped: int = 0          # scored faces in clusters of two or more
    library: float | None = None   # pairwise precision predicted at the library's size

    @property
    def f(self) -> float:
        return (self.pairwise.f + self.bcubed.f) / 2

    def line(self) -> str:
        lib = f"   {self.library:.4f}" if self.library is not None else ""
        return (f"{self.threshold:9.3f} {self.clusters:8d}   {self.pairwise.precision:.4f} "
                f"{self.pairwise.recall:.4f} {self.pairwise.f:.4f}   {self.bcubed.precision:.4f} "
                f"{self.bcubed.recall:.4f} {self.bcubed.f:.4f}{lib}")


SWEEP_HEADER = "threshold clusters   pairwise P/R/F           BCubed P/R/F"
LIBRARY_HEADER = "   library P (predicted)"


@dataclass
class Calibration:
    truth: TruthSet
    faces: int                                   # faces clustered (all faces of truth photos)
    cluster_rows: list[SweepRow] = field(default_factory=list)
    merge_rows: list[SweepRow] = field(default_factory=list)   # at the recommended initial
    assign_rows: list[tuple[float, Scores]] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    target_precision: float = TARGET_PRECISION
    best_f: SweepRow | None = None               # the best-F cluster row
    target_margin: float = 0.0                   # the margin added at the recommended row
    truth_pick: float | None = None              # the cluster threshold the truth set alone gives
    library_faces: int = 0                       # faces of the whole cache (the library)
    scale: dict = field(default_factory=dict)    # the library-scale model, as recorded


def truth_selection(cache: FaceCache, truth: TruthSet) -> tuple[FaceSelection, np.ndarray]:
    """Every selected face of the truth photos, and the position in it of each truth face
    (truth faces whose photo has no recorded location are left out of ``truth``)."""
    sel = select_faces(cache)
    shas = set(cache.faces["sha256"][truth.rows].tolist())
    idx = np.flatnonzero(np.fromiter((s in shas for s in sel.sha256.tolist()), dtype=bool,
                                     count=len(sel)))
    sub = subset(sel, idx)
    pos = np.searchsorted(sub.rows, truth.rows)
    found = (pos < len(sub.rows)) & (sub.rows[np.minimum(pos, len(sub.rows) - 1)] == truth.rows)
    truth.rows, truth.labels = truth.rows[found], truth.labels[found]
    return sub, pos[found]


def score(labels: np.ndarray, scored: np.ndarray, truth_labels: np.ndarray,
          threshold: float) -> SweepRow:
    pred = labels[scored]
    row = SweepRow(threshold, pairwise_scores(pred, truth_labels),
                   bcubed_scores(pred, truth_labels), int(len(np.unique(pred))))
    _, inverse, counts = np.unique(pred, return_inverse=True, return_counts=True)
    row.grouped = int(np.sum(counts[inverse.reshape(-1)] >= 2))
    return row


def precision_margin(target: float, n: int) -> float:
    """One binomial standard error of a precision near ``target`` measured on ``n`` faces."""
    return math.sqrt(target * (1.0 - target) / n) if n else 1.0


def target_pick(rows: list[SweepRow], target: float, best: int) -> tuple[int, float, str]:
    """Index of the recommended row for ``target`` precision (module docstring), the margin
    it cleared and a note ("" when the margin was met)."""
    if target <= 0:
        return best, 0.0, ""
    upto = range(best + 1)
    ok = [i for i in upto
          if rows[i].pairwise.precision >= target + precision_margin(target, rows[i].grouped)]
    if ok:
        return ok[-1], precision_margin(target, rows[ok[-1]].grouped), ""
    bare = [i for i in upto if rows[i].pairwise.precision >= target]
    if bare:
        return bare[-1], 0.0, (f"no threshold reaches precision {target} plus the margin for "
                               "this truth set's size (more truth photos narrow it): took "
                               "the bare target")
    return 0, 0.0, (f"no threshold reaches precision {target}: took the strictest; check the "
                    "truth folders for misfiled photos")


def plateau_pick(scores: list[float], where: str = "low") -> int:
    """Index in the run of best scores (within PLATEAU of the best): its strictest end
    (``low``) or its middle."""
    best = max(scores)
    good = [i for i, s in enumerate(scores) if s >= best - PLATEAU]
    # the longest contiguous run of good indices that holds the best
    runs, run = [], [good[0]]
    for i in good[1:]:
        if i == run[-1] + 1:
            run.append(i)
        else:
            runs.append(run)
            run = [i]
    runs.append(run)
    top = max(runs, key=lambda r: (max(scores[i] for i in r), len(r)))
    return top[0] if where == "low" else top[len(top) // 2]


def _ceil2(x: float) -> float:
    return math.ceil(x * 100 - 1e-9) / 100


def centroid_distances(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each face's cosine distance to its own cluster centroid."""
    cents = centroids(emb, labels)
    return 1.0 - np.einsum("ij,ij->i", emb, cents[labels])


def assign_sweep(emb: np.ndarray, labels: np.ndarray, grid) -> list[tuple[float, Scores]]:
    """Join-the-nearest-centroid decisions with leave-one-out person centroids: for each
    distance threshold, P = right joins / joins, R = right joins / faces that have a person
    to join (people with 2+ truth faces)."""
    emb = normalize_rows(emb)
    k = int(labels.max()) + 1
    sums = np.zeros((k, emb.shape[1]), dtype=np.float64)
    add_rows(sums, labels, emb)
    counts = np.bincount(labels, minlength=k)
    cents = normalize_rows(sums.astype(np.float32))
    best_d = np.empty(len(emb))
    best_own = np.zeros(len(emb), dtype=bool)
    for s in range(0, len(emb), 4096):
        x, lab = emb[s:s + 4096], labels[s:s + 4096]
        sims = x @ cents.T
        own = normalize_rows((sums[lab] - x).astype(np.float32))
        own_sim = np.where(counts[lab] > 1, np.einsum("ij,ij->i", x, own), -np.inf)
        sims[np.arange(len(x)), lab] = own_sim
        j = sims.argmax(axis=1)
        best_d[s:s + 4096] = 1.0 - sims[np.arange(len(x)), j]
        best_own[s:s + 4096] = j == lab
    joinable = int(np.sum(counts[labels] > 1))
    out = []
    for c in grid:
        joins = best_d <= c
        right = int(np.sum(joins & best_own))
        n_joins = int(joins.sum())
        out.append((float(c), Scores(right / n_joins if n_joins else 1.0,
                                     right / joinable if joinable else 1.0)))
    return out


def library_pick(cal: Calibration, i: int, estimated: float | None) -> int:
    """The recommended row once the library's size counts: the highest row at or below ``i``
    whose precision predicted at library scale meets the target; notes why it moved, and
    when it is above the cache-only estimate ``estimated``, why that is kept."""
    rows, target = cal.cluster_rows, cal.target_precision
    ok = [j for j in range(i + 1) if rows[j].library is not None
          and rows[j].library >= target]
    j = ok[-1] if ok else 0
    if j < i:
        cal.notes.append(
            f"cluster lowered from {rows[i].threshold} (the truth set's pick: precision "
            f"{rows[i].pairwise.precision:.4f} among its {len(cal.truth.people)} people) to "
            f"{rows[j].threshold}: at the library's size ({cal.library_faces} faces) "
            f"{rows[i].threshold} is predicted at precision {rows[i].library:.4f}, "
            f"{rows[j].threshold} at {rows[j].library:.4f} (target {target})"
            + ("" if ok else "; no threshold is predicted to meet it: took the strictest"))
    if estimated is not None and rows[j].threshold > estimated + 1e-9:
        cal.notes.append(
            f"cluster {rows[j].threshold} is above the cache-only estimate {estimated} "
            f"(`calibrate --estimate`): kept, because the truth set measures precision "
            f"{rows[j].pairwise.precision:.4f} there and the library-scale model predicts "
            f"{rows[j].library:.4f} >= {target} (the estimate has no names to check against)")
    return j


def calibrate(cache: FaceCache, truth_root: str, engine: str = "auto",
              target_precision: float = TARGET_PRECISION,
              merge_ratio: float = CLUSTER_MERGE_RATIO,
              estimated: float | None = None) -> Calibration:
    """Sweep and recommend every threshold (see the module docstring); ``estimated``: the
    cache-only estimate of the cluster threshold, when there is one."""
    truth = load_truth(truth_root, cache)
    sel, scored = truth_selection(cache, truth)
    if len(np.unique(truth.labels)) < 2 or len(scored) < 4:
        raise ValueError(f"{truth_root}: only {len(scored)} truth faces of "
                         f"{len(np.unique(truth.labels))} people are in this cache; embed the "
                         "truth folders into it first (several people, several photos each)")
    cal = Calibration(truth=truth, faces=len(sel), target_precision=target_precision)
    cl = sel.cannot_link()
    labels_at = dict(zip(CLUSTER_GRID, cluster_sweep(sel.embeddings, CLUSTER_GRID, cl, engine,
                                                     merge_ratio=merge_ratio)))
    cal.cluster_rows = [score(labels_at[t], scored, truth.labels, t) for t in CLUSTER_GRID]
    best_f = plateau_pick([r.f for r in cal.cluster_rows], "low")
    cal.best_f = cal.cluster_rows[best_f]
    i, cal.target_margin, note = target_pick(cal.cluster_rows, target_precision, best_f)
    if note:
        cal.notes.append(note)
    cal.truth_pick = float(CLUSTER_GRID[i])
    tail = predict_library(cal, cache, sel.embeddings[scored])
    if target_precision > 0:
        i = library_pick(cal, i, estimated)
    t_cluster = float(CLUSTER_GRID[i])
    cal.scale.update(cluster=t_cluster, stranger_p=tail.probability(t_cluster),
                     target_precision=float(target_precision),
                     library_precision=round(float(cal.cluster_rows[i].library), 4))

    # refine: stage 1 at `initial`, then the centroid merge
    best = None
    for t_init in [t for t in CLUSTER_GRID if t_cluster - 0.15 - 1e-9 <= t <= t_cluster]:
        rows = [score(merge_clusters(sel, labels_at[t_init], m, engine), scored, truth.labels,
                      m) for m in MERGE_GRID]
        j = plateau_pick([r.f for r in rows], "middle")
        key = (round(rows[j].f, 3), t_init)
        if best is None or key >= best[0]:
            best = (key, t_init, float(MERGE_GRID[j]), rows)
    _, t_init, t_merge, cal.merge_rows = best
    refined = merge_clusters(sel, labels_at[t_init], t_merge, engine)

    # outliers: distances of correctly placed truth faces to their centroid
    pred = refined[scored]
    majority = {c: np.bincount(truth.labels[pred == c]).argmax() for c in np.unique(pred)}
    right = np.array([majority[c] == t for c, t in zip(pred, truth.labels)])
    d = centroid_distances(sel.embeddings, refined)[scored]
    big = np.bincount(refined)[pred] >= 4
    pool = d[right & big]
    gates = {}
    if len(pool) >= MIN_GATE_FACES:
        t_outlier = _ceil2(float(np.quantile(pool, OUTLIER_QUANTILE)))
        gates = {"outlier": t_outlier,
                 "swap_outlier": _ceil2(float(np.quantile(pool, SWAP_QUANTILE)))}
        wrong = ~right
        cal.notes.append(f"outlier {t_outlier}: drops {int(np.sum(d[right] > t_outlier))} of "
                         f"{int(right.sum())} correctly placed truth faces and "
                         f"{int(np.sum(d[wrong] > t_outlier))} of {int(wrong.sum())} "
                         "misplaced ones")
    else:
        cal.notes.append(
            f"WARNING: the truth set is too small to set an outlier gate: {len(pool)} "
            f"correctly placed faces in groups of 4+ ({MIN_GATE_FACES} needed for a "
            f"{OUTLIER_QUANTILE:.0%} percentile); outlier and swap_outlier are not "
            "recommended nor saved (refine and export-swap keep their flag, the model's or "
            "the estimated value); add people with several photos each to set them")

    cal.assign_rows = assign_sweep(sel.embeddings[scored], truth.labels, ASSIGN_GRID)
    k = plateau_pick([s.f for _, s in cal.assign_rows], "low")
    t_assign = cal.assign_rows[k][0]
    cal.thresholds = {"cluster": t_cluster, "initial": t_init, "merge": t_merge, **gates,
                      "candidate_match": t_assign, "extend": t_assign}
    return cal


def predict_library(cal: Calibration, cache: FaceCache,
                    truth_embeddings: np.ndarray) -> StrangerTail:
    """Each cluster row's pairwise precision predicted at the size of the whole cache (the
    library; core/scale.py), from the truth faces' cross-person tail and the cache's own
    nearest neighbours; ``cal.scale`` keeps what a later check needs."""
    lib = select_faces(cache)
    cal.library_faces = len(lib)
    tail = stranger_tail(truth_embeddings, cal.truth.labels, CLUSTER_GRID)
    links = library_links(lib.embeddings, lib.sha256, CLUSTER_GRID)
    for row, e in zip(cal.cluster_rows, links):
        row.library = predicted_precision(tail, len(lib), int(e), row.threshold)
    cal.scale = {**tail.record(), "library_faces": len(lib)}
    return tail


# a later cluster re-checks the saved operating point once the library has grown this much
DRIFT_GROWTH = 1.10


def drift_warning(cache: FaceCache, cache_path: str, threshold: float) -> str | None:
    """The warning a later `cluster` / `run` prints when the library has grown since
    ``calibrate --save`` and the saved cluster ``threshold`` is now predicted below the
    target precision (core/scale.py, with the recorded stranger tail); None when fine, not
    grown, or the threshold is not the calibrated one."""
    scale = calibration_scale(cache.meta, cache_path)
    if scale is None or abs(scale["cluster"] - threshold) > 1e-9:
        return None
    sel = select_faces(cache)
    if len(sel) < DRIFT_GROWTH * scale["library_faces"] or not scale["target_precision"]:
        return None
    links = links_within(sel.embeddings, sel.sha256, threshold)
    now = precision_from(scale["stranger_p"], len(sel), links)
    if now >= scale["target_precision"]:
        return None
    truth = (cache.meta.get("calibration") or {}).get("truth_root") or "TRUTH_ROOT"
    return (f"{cache_path}: the library has grown from {scale['library_faces']} to {len(sel)} "
            f"faces since calibrate: at the calibrated cluster threshold {threshold} pairwise "
            f"precision is now predicted at {now:.4f} (calibrated for {scale['library_precision']}"
            f", target {scale['target_precision']}); more strangers, more mixes: re-run "
            f"`{program_name()} calibrate {cache_path} {truth} --save`")


def score_groups(groups: list[list[str]], cache: FaceCache, truth: TruthSet) -> tuple[str, int]:
    """Scores of one run's output (face keys per cluster / faceset) on the truth faces it
    holds; returns (line, number of truth faces found in the output)."""
    keys = cache.face_keys()[truth.rows]
    label_of = {k: i for i, g in enumerate(groups) for k in g}
    pred = np.array([label_of.get(k, -1) for k in keys.tolist()])
    found = pred >= 0
    if not found.any():
        return "no truth face is in this output", 0
    p, t = pred[found], truth.labels[found]
    line = (f"pairwise {pairwise_scores(p, t).line()}; BCubed {bcubed_scores(p, t).line()} "
            f"(over the {int(found.sum())} of {len(keys)} truth faces in the output)")
    return line, int(found.sum())


def truth_report(cache: FaceCache, truth_root: str, groups: list[list[str]]) -> list[str]:
    """The lines `cluster --truth` / `refine --truth` print for one run's groups of face keys."""
    truth = load_truth(truth_root, cache)
    line, _ = score_groups(groups, cache, truth)
    return [truth.line(), f"truth scores: {line}"]
