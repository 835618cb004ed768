"""Does a calibration on a few people hold at library scale? (docs/clustering.md,
"Calibration at library scale"; docs/benchmarks.md, "Calibration at library scale")

    python bench/bench_calibrate_scale.py CACHE ../shared/testdata/lfw_dev --seeds 0 1 2

CACHE holds every photo of TRUTH_ROOT (the library, e.g. lfw_dev embedded with testpack_s).
For each seed: copy PEOPLE random people with at least MIN_PHOTOS photos (up to PHOTOS each)
into a temporary truth folder (a user's hand-sorted few), run calibrate's own function on
it against the whole cache, then cluster the whole library at the recommended threshold as
`cluster` does and score it on every labelled face of TRUTH_ROOT. Also prints what the truth
set alone would have picked, scored the same way. The cache is only read.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facesets.core.metrics import bcubed_scores, pairwise_scores  # noqa: E402
from facesets.core.selection import select_faces  # noqa: E402
from facesets.core.truth import load_truth  # noqa: E402
from facesets.engine import CLUSTER_MERGE_RATIO, cluster_sweep  # noqa: E402
from facesets.formats.cache import load_cache  # noqa: E402
from facesets.steps.calibrate import calibrate, truth_selection  # noqa: E402
from facesets.steps.estimate import EstimateError, cluster_estimate  # noqa: E402


def pick_people(root: Path, n: int, min_photos: int, photos: int, seed: int,
                dest: Path) -> int:
    rng = np.random.default_rng(seed)
    folders = sorted(p for p in root.iterdir() if p.is_dir()
                     and len(list(p.glob("*.jpg"))) >= min_photos)
    chosen = rng.choice(len(folders), size=min(n, len(folders)), replace=False)
    count = 0
    for i in sorted(chosen):
        files = sorted(folders[i].glob("*.jpg"))
        take = rng.permutation(len(files))[:photos]
        (dest / folders[i].name).mkdir(parents=True)
        for j in take:
            shutil.copy2(files[j], dest / folders[i].name / files[j].name)
            count += 1
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("truth_root")
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--min-photos", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--target-precision", type=float, default=0.995)
    a = ap.parse_args()
    cache = load_cache(a.cache)
    t0 = time.monotonic()
    truth = load_truth(a.truth_root, cache)
    sel, scored = truth_selection(cache, truth)
    lib = select_faces(cache)
    assert len(lib) == len(sel), "the cache holds photos outside TRUTH_ROOT: not measured"
    try:
        est = cluster_estimate(lib, a.cache)[0]
    except EstimateError:
        est = None
    print(f"library: {len(sel)} faces, {len(truth.people)} people, {len(scored)} labelled; "
          f"cache-only estimate {est} ({time.monotonic() - t0:.0f} s)")
    results = {}

    def measured(t: float) -> str:
        if t not in results:
            labels = cluster_sweep(sel.embeddings, [t], sel.cannot_link(), "auto",
                                   merge_ratio=CLUSTER_MERGE_RATIO)[0][scored]
            pw, bc = pairwise_scores(labels, truth.labels), bcubed_scores(labels, truth.labels)
            results[t] = f"pairwise {pw.line()}; BCubed {bc.line()}"
        return results[t]

    for seed in a.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            n = pick_people(Path(a.truth_root), a.people, a.min_photos, a.photos, seed,
                            Path(tmp) / "truth")
            t1 = time.monotonic()
            cal = calibrate(cache, str(Path(tmp) / "truth"), target_precision=a.target_precision,
                            estimated=est)
            took = time.monotonic() - t1
        t = cal.thresholds["cluster"]
        row = next(r for r in cal.cluster_rows if r.threshold == t)
        print(f"seed {seed}: {a.people} people, {n} photos; calibrate {took:.0f} s; truth-set "
              f"pick {cal.truth_pick}, library pick {t} (predicted P {row.library:.4f}, truth "
              f"set P {row.pairwise.precision:.4f}); tail {cal.scale}")
        print(f"  library at {t}: {measured(t)}")
        if cal.truth_pick != t:
            print(f"  library at the truth-set pick {cal.truth_pick}: {measured(cal.truth_pick)}")
        for note in cal.notes:
            if note.startswith("cluster"):
                print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
