"""Which swap-ready facesets hold two people: the flagged list of the review page, measured
(docs/clustering.md, "Where a mix is likely: the faceset").

    python bench/bench_faceset_mix.py CACHE ../shared/testdata/lfw_dev \
        --thresholds 0.55 0.60 --min-faces 5 15 --ratios 0.8 0.85 0.9 0.95

The pipeline's library functions on an embedded cache (nothing is cropped): refine's stages
(core/refinement.refine_labels: initial clustering at each threshold, centroid merge,
quality and outlier gates, at least --min-faces photos), then export-swap's gates per
faceset (core/swapexport.select_for_swap: swap outlier, one face per photo, near
duplicates), then the faceset's split distance on its kept faces (core/cohesion.faceset_split,
what a faceset manifest's ``cohesion.split`` holds). A faceset is truly mixed when its kept
faces hold labelled faces of two people (bystanders are unlabelled and never count); "2+":
the second person has at least two faces there. Per half of the people (A-F: tuning, G-L:
held back; a faceset belongs to the half of its majority person) and per ratio: how many
facesets the rule split >= ratio x threshold flags, the share of them truly mixed, and the
share of truly mixed facesets flagged.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facesets.core.cohesion import faceset_split  # noqa: E402
from facesets.core.quality import cache_row, face_quality  # noqa: E402
from facesets.core.refinement import RefineParams, refine_labels  # noqa: E402
from facesets.core.selection import select_faces  # noqa: E402
from facesets.core.swapexport import ExportParams, select_for_swap  # noqa: E402
from facesets.core.thresholds import scaled  # noqa: E402
from facesets.core.truth import load_truth  # noqa: E402
from facesets.formats.cache import load_cache  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("truth_root")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.55])
    ap.add_argument("--min-faces", type=int, nargs="+", default=[15])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.85, 0.9, 0.95])
    a = ap.parse_args()
    cache = load_cache(a.cache)
    truth = load_truth(a.truth_root, cache)
    person_of_row = dict(zip(truth.rows.tolist(), truth.labels.tolist()))
    first_half = np.array([name[:1].upper() <= "F" for name in truth.people])
    sel = select_faces(cache)
    person = np.array([person_of_row.get(int(r), -1) for r in sel.rows])
    quality = [face_quality(cache_row(cache.faces, r), 512, 0.5) for r in sel.rows]
    for t in a.thresholds:
        # every other threshold scaled from the cluster one, as for a calibrated cache
        # LFW's faces are ~55 px (250 px photos): the size gates are off, the rest as shipped
        export = ExportParams(outlier_threshold=scaled("swap_outlier", t), min_face_short=0.0)
        for min_faces in a.min_faces:
            params = RefineParams(initial_threshold=t, merge_threshold=scaled("merge", t),
                                  outlier_threshold=scaled("outlier", t), min_faces=min_faces,
                                  min_short=0.0)
            labels = refine_labels(cache, sel, params).labels
            rows = []      # (split, mixed, mixed 2+, half, faces)
            for lab in range(int(labels.max()) + 1 if (labels >= 0).any() else 0):
                members = np.flatnonzero(labels == lab)
                _, kept, _ = select_for_swap(cache, sel, members, quality, export)
                kept = members[kept]
                who = person[kept]
                who = who[who >= 0]
                if not len(who):
                    continue
                ids, counts = np.unique(who, return_counts=True)
                rows.append((faceset_split(sel.embeddings[kept]), len(ids) > 1,
                             len(ids) > 1 and np.sort(counts)[-2] >= 2,
                             int(first_half[ids[np.argmax(counts)]]), len(kept)))
            split = np.array([r[0] for r in rows])
            mixed = np.array([r[1] for r in rows], dtype=bool)
            mixed2 = np.array([r[2] for r in rows], dtype=bool)
            half = np.array([r[3] for r in rows])
            print(f"threshold {t}, min-faces {min_faces}: {len(rows)} facesets")
            for h, name in ((1, "A-F"), (0, "G-L")):
                pool = half == h
                print(f"  {name}: {int(pool.sum())} facesets, truly mixed {int(mixed[pool].sum())}"
                      f" (2+: {int(mixed2[pool].sum())}); split of mixed: "
                      f"{np.round(np.sort(split[pool & mixed])[::-1], 3).tolist()}; "
                      f"top clean: {np.round(np.sort(split[pool & ~mixed])[::-1][:5], 3).tolist()}")
                for ratio in a.ratios:
                    flagged = pool & (split >= ratio * t)
                    share = mixed[flagged].mean() if flagged.any() else 0.0
                    found = flagged[pool & mixed].mean() if (pool & mixed).any() else 0.0
                    found2 = flagged[pool & mixed2].mean() if (pool & mixed2).any() else 0.0
                    print(f"    ratio {ratio}: flagged {int(flagged.sum())}, truly mixed "
                          f"{int(mixed[flagged].sum())} ({share:.0%}); mixed flagged "
                          f"{int((flagged & mixed).sum())}/{int((pool & mixed).sum())} "
                          f"({found:.0%}), 2+ mixes flagged {found2:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
