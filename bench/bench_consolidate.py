"""consolidate's grouping on a synthetic swap-ready folder (docs/benchmarks.md, "consolidate").

    python bench/bench_consolidate.py [--facesets 300] [--dim 512] [--repeat 3]

Writes a swap-ready folder of N facesets (top-level manifest + one manifest per faceset with
a buffalo_l-sized centroid and no faces: the grouping reads only the centroids) where every
tenth identity is exported twice (a noisy copy of its centroid, cosine similarity ~0.9), then times
``plan_consolidate`` (reading every manifest, complete linkage, the groups) at buffalo_l's
thresholds, best of ``--repeat``, and the linkage alone. The folder is built in a temp dir.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facesets.core.thresholds import MODEL_THRESHOLDS  # noqa: E402
from facesets.formats.manifest import (MANIFEST_VERSION, SWAP_FACESET_MANIFEST,  # noqa: E402
                                       SWAP_MANIFEST, write_manifest)
from facesets.steps.consolidate import complete_linkage_groups, plan_consolidate  # noqa: E402


def build(root: Path, n: int, dim: int, seed: int = 0) -> int:
    """N faceset manifests; returns how many are a second export of another identity."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, dim))
    twins = 0
    for i in range(0, n, 10):
        if i + 1 < n:
            base[i + 1] = base[i] + 0.5 * rng.standard_normal(dim)   # cosine ~0.9
            twins += 1
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    head = {"version": MANIFEST_VERSION, "model": "buffalo_l", "parameters": {}}
    listing = []
    for i in range(n):
        name = f"faceset_{i:03d}"
        write_manifest(root / name / "manifest.json", dict(
            head, format=SWAP_FACESET_MANIFEST, name=name, top_n=30,
            centroid=[round(float(v), 6) for v in base[i]], faces=[], dropped=[],
            summary={}, bundles={}))
        listing.append({"name": name, "manifest": f"{name}/manifest.json"})
    write_manifest(root / "manifest.json", dict(head, format=SWAP_MANIFEST, summary={},
                                                facesets=listing))
    return twins


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facesets", type=int, default=300)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t = MODEL_THRESHOLDS["buffalo_l"]
    group, merge = t["consolidate_group"], t["consolidate_merge"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "swap"
        twins = build(root, args.facesets, args.dim)
        best, plan = float("inf"), None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            plan = plan_consolidate(root, group, merge)
            best = min(best, time.perf_counter() - t0)
        cents = np.stack([np.asarray(json.loads(
            (root / f"faceset_{i:03d}" / "manifest.json").read_text())["centroid"])
            for i in range(args.facesets)])
        t0 = time.perf_counter()
        complete_linkage_groups(cents, group)
        link = time.perf_counter() - t0
    found = sum(len(g.members) == 2 for g in plan.merges())
    print(f"consolidate plan: {args.facesets} facesets ({args.dim}-D), {twins} planted "
          f"twins, {len(plan.groups)} groups, {found} confident pairs; "
          f"{best:.3f} s (best of {args.repeat}; linkage alone {link * 1000:.1f} ms)")
    return 0 if best < 5.0 and found == twins else 1


if __name__ == "__main__":
    sys.exit(main())
