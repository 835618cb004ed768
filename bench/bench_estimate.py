"""Thresholds estimated from a cache alone against calibrate's on the same cache
(docs/clustering.md, "Estimated thresholds").

    python bench/bench_estimate.py CACHE TRUTH_ROOT

CACHE holds the embedded TRUTH_ROOT photos (e.g. `sort_faces.py embed ../shared/testdata/faces
c.npz --model testpack_s --model-root ../shared/insightface`). Prints, for the estimate and
for calibrate's recommendation, the pairwise and BCubed P/R/F of the clustering at the cluster
threshold and after refine's merge, the join-nearest-centroid P/R/F at candidate_match, and
how many truth faces each outlier gate drops, all with calibrate's own functions.
Neither estimate nor calibration is saved into CACHE.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facesets.core.refinement import merge_clusters  # noqa: E402
from facesets.core.truth import load_truth  # noqa: E402
from facesets.engine import cluster_faces  # noqa: E402
from facesets.formats.cache import load_cache  # noqa: E402
from facesets.steps import calibrate as cal  # noqa: E402
from facesets.steps.estimate import estimate  # noqa: E402


def rows(name: str, th: dict, sel, scored, labels) -> list[str]:
    lab = cluster_faces(sel.embeddings, th["cluster"], sel.cannot_link())
    r0 = cal.score(lab, scored, labels, th["cluster"])
    first = lab if th["initial"] == th["cluster"] else \
        cluster_faces(sel.embeddings, th["initial"], sel.cannot_link())
    merged = merge_clusters(sel, first, th["merge"], "auto")
    r1 = cal.score(merged, scored, labels, th["merge"])
    join = cal.assign_sweep(sel.embeddings[scored], labels, [th["candidate_match"]])[0][1]
    pred = merged[scored]
    major = {c: np.bincount(labels[pred == c]).argmax() for c in np.unique(pred)}
    right = np.array([major[c] == t for c, t in zip(pred, labels)])
    dist = cal.centroid_distances(sel.embeddings, merged)[scored]
    big = np.bincount(merged)[pred] >= 4

    def drops(t: float) -> str:
        return (f"{int(np.sum((dist > t) & right & big))}/{int(np.sum(right & big))} right, "
                f"{int(np.sum((dist > t) & ~right & big))}/{int(np.sum(~right & big))} "
                "misplaced")
    return [f"{name} cluster {th['cluster']}: pairwise {r0.pairwise.line()}; BCubed "
            f"{r0.bcubed.line()}; {r0.clusters} clusters",
            f"{name} refine {th['initial']} / {th['merge']}: pairwise {r1.pairwise.line()}; "
            f"BCubed {r1.bcubed.line()}",
            f"{name} join {th['candidate_match']}: {join.line()}",
            f"{name} outlier {th['outlier']}: drops {drops(th['outlier'])}; swap_outlier "
            f"{th['swap_outlier']}: drops {drops(th['swap_outlier'])}"]


def main() -> int:
    cache_path, truth_root = sys.argv[1], sys.argv[2]
    cache = load_cache(cache_path)
    t = time.monotonic()
    est = estimate(cache, cache_path)
    print(f"estimate ({time.monotonic() - t:.1f} s):")
    print("\n".join(est.lines))
    t = time.monotonic()
    calib = cal.calibrate(cache, truth_root)
    print(f"calibrate ({time.monotonic() - t:.1f} s): {calib.thresholds}")
    truth = load_truth(truth_root, cache)
    sel, scored = cal.truth_selection(cache, truth)
    for name, th in (("estimated", est.thresholds), ("calibrated", calib.thresholds)):
        print("\n".join(rows(name, th, sel, scored, truth.labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
