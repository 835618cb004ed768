"""How well the split distance finds the clusters that hold two people (docs/clustering.md,
"Where a mix is likely").

    python bench/bench_cohesion.py CACHE ../shared/testdata/lfw_dev --thresholds 0.55 0.58

Clusters every face of TRUTH_ROOT's photos as `cluster` does (graph engine, centroid merge),
measures each cluster's split distance (core/cohesion.py) and, per half of the people
(A-F: tuning, G-L: held back; a cluster belongs to the half of its majority person), how
many clusters are truly mixed (two labelled people), how many the rule split >= MIXED_RATIO x
threshold flags and what share of those is truly mixed, and how many mixed clusters are in
the top 20 / 50 of the ranking. Bystander faces are unlabelled and never count as a mix.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facesets.core.cohesion import MIXED_RATIO, split_distances  # noqa: E402
from facesets.core.truth import load_truth  # noqa: E402
from facesets.engine import CLUSTER_MERGE_RATIO, cluster_sweep  # noqa: E402
from facesets.formats.cache import load_cache  # noqa: E402
from facesets.steps.calibrate import truth_selection  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("truth_root")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.58])
    a = ap.parse_args()
    cache = load_cache(a.cache)
    truth = load_truth(a.truth_root, cache)
    sel, scored = truth_selection(cache, truth)
    person = np.full(len(sel), -1)
    person[scored] = truth.labels
    first_half = np.array([name[:1].upper() <= "F" for name in truth.people])
    for t, labels in zip(a.thresholds, cluster_sweep(sel.embeddings, a.thresholds,
                                                     sel.cannot_link(), "auto",
                                                     merge_ratio=CLUSTER_MERGE_RATIO)):
        split = split_distances(sel.embeddings, labels)
        k = len(split)
        size = np.bincount(labels, minlength=k)
        mixed = np.zeros(k, dtype=bool)
        half = np.full(k, -1)
        for c, members in enumerate(np.split(np.argsort(labels, kind="stable"),
                                             np.cumsum(size)[:-1])):
            who = person[members]
            who = who[who >= 0]
            if len(who):
                ids, counts = np.unique(who, return_counts=True)
                mixed[c] = len(ids) > 1
                half[c] = int(first_half[ids[np.argmax(counts)]])
        print(f"threshold {t}: {k} clusters")
        for h, name in ((1, "A-F"), (0, "G-L")):
            for min_faces in (2, 5):
                pool = (half == h) & (size >= min_faces)
                flagged = pool & (split >= MIXED_RATIO * t)
                rank = np.argsort(-np.where(pool, split, -1.0))
                print(f"  {name}, clusters of {min_faces}+ faces: {int(pool.sum())}, truly mixed "
                      f"{int(mixed[pool].sum())} ({mixed[pool].mean():.1%}); flagged "
                      f"{int(flagged.sum())}, of them truly mixed {int(mixed[flagged].sum())} "
                      f"({mixed[flagged].mean() if flagged.any() else 0:.0%}); top 20 holds "
                      f"{int(mixed[rank[:20]].sum())}, top 50 {int(mixed[rank[:50]].sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
