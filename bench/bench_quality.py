"""Identity quality of clustering methods on a labelled folder (docs/benchmarks.md, "Identity
quality").

    python sort_faces.py embed ../shared/testdata/lfw_dev /tmp/lfw_dev.npz \\
        --model testpack_s --model-root ../shared/insightface          # once (~20 min, 2 cores)
    python bench/bench_quality.py /tmp/lfw_dev.npz ../shared/testdata/lfw_dev \\
        exact graph exact/quality@norm=0.6 exact/mutual

Every face of the truth photos is clustered (bystanders too, cannot-link honoured); the
labelled face of each photo (the one nearest its centre, core/truth.py) is scored. For each
method, over the threshold grid: pairwise and BCubed P/R/F, the best F, and the recall at
the highest threshold whose precision is still >= 0.995 and >= 0.99 (pairwise; BCubed
beside it). Exact average linkage is always measured in the same run, as the baseline.

A method is ENGINE[/LINKAGE][@GATES]: ENGINE exact or graph, LINKAGE one of
facesets.engine.LINKAGES, GATES for ``quality`` as short=PX,blur=V,det=S,norm=RATIO
(core/reliability.py). ``+ratio=R`` adds the centroid merge at R x threshold (what
``cluster`` does by default, steps/cluster.py MERGE_RATIO); ``+merge=M`` refine's centroid
merge at a fixed M instead. ``--embeddings F.npy`` scores other embeddings of the same faces
(bench/bench_flip.py writes the flip test-time augmented ones).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facesets.core.metrics import bcubed_scores, pairwise_scores  # noqa: E402
from facesets.core.refinement import merge_clusters  # noqa: E402
from facesets.core.reliability import (DEFAULT_GATES, ReliabilityGates, face_signals,  # noqa: E402
                                       unreliable_from_signals)
from facesets.core.truth import load_truth  # noqa: E402
from facesets.engine import cluster_sweep  # noqa: E402
from facesets.formats.cache import load_cache  # noqa: E402
from facesets.steps.calibrate import truth_selection  # noqa: E402

GRID = tuple(np.round(np.arange(0.40, 0.8001, 0.01), 3))
TARGETS = (0.995, 0.99)
GATE_KEYS = {"short": "min_short", "blur": "min_blur", "det": "min_det_score",
             "norm": "min_norm_ratio"}


def parse_method(spec: str) -> dict:
    m = {"spec": spec, "engine": "exact", "linkage": "average", "gates": DEFAULT_GATES,
         "merge": None, "ratio": 0.0}
    if "+ratio=" in spec:
        spec, ratio = spec.split("+ratio=")
        m["ratio"] = float(ratio)
    if "+merge=" in spec:
        spec, merge = spec.split("+merge=")
        m["merge"] = float(merge)
    if "@" in spec:
        spec, gates = spec.split("@")
        kw = {}
        for item in gates.split(","):
            k, v = item.split("=")
            kw[GATE_KEYS[k]] = float(v)
        m["gates"] = ReliabilityGates(**kw)
    parts = spec.split("/")
    m["engine"] = parts[0]
    if len(parts) > 1:
        m["linkage"] = parts[1]
    return m


def at_target(rows: list[dict], key: str, target: float) -> dict | None:
    """The row of the highest threshold whose ``key`` precision is >= target."""
    ok = [r for r in rows if r[key].precision >= target]
    return max(ok, key=lambda r: r["t"]) if ok else None


def infomap_sweep(embeddings: np.ndarray, grid, k: int = 32) -> list[np.ndarray]:
    """Infomap (two-level map equation, `pip install infomap`) on the k-NN graph, edges
    within each threshold weighted by cosine similarity: the untrained method that leads on
    MS1M (face-cluster-by-infomap). Bench only; cannot-link is not honoured."""
    from infomap import Infomap

    from facesets.engine import normalize_rows
    from facesets.engine.knn import knn_edges

    x = normalize_rows(embeddings)
    u, v, d = knn_edges(x, k=k, max_dist=float(max(grid)))
    out = []
    for t in grid:
        keep = d <= t
        im = Infomap("--two-level --silent --seed 1")
        im.add_links(zip(u[keep].tolist(), v[keep].tolist(), (1.0 - d[keep]).tolist()))
        im.run()
        labels = np.arange(len(x)) + len(x)          # faces without an edge stay alone
        for node in im.nodes:
            labels[node.node_id] = node.module_id
        out.append(np.unique(labels, return_inverse=True)[1].reshape(-1))
    return out


def run_method(m: dict, sel, signals, scored, truth, grid) -> tuple[list[dict], float]:
    unreliable = unreliable_from_signals(signals, m["gates"]) if m["linkage"] == "quality" \
        else None
    t0 = time.perf_counter()
    if m["linkage"] == "infomap":
        sweep = infomap_sweep(sel.embeddings, grid)
    else:
        sweep = cluster_sweep(sel.embeddings, grid, sel.cannot_link(), m["engine"],
                              m["linkage"], unreliable, m["ratio"])
    if m["merge"] is not None:
        sweep = [merge_clusters(sel, lab, m["merge"], m["engine"]) for lab in sweep]
    wall = time.perf_counter() - t0
    rows = []
    for t, lab in zip(grid, sweep):
        pred = lab[scored]
        rows.append({"t": float(t), "pw": pairwise_scores(pred, truth),
                     "bc": bcubed_scores(pred, truth), "k": int(len(np.unique(pred))),
                     "labels": lab})
    m["unreliable"] = int(unreliable.sum()) if unreliable is not None else 0
    return rows, wall


def summary(m: dict, rows: list[dict], wall: float) -> str:
    bp = max(rows, key=lambda r: r["pw"].f)
    bb = max(rows, key=lambda r: r["bc"].f)
    cells = [m["spec"], f"{bp['pw'].f:.4f} ({bp['t']:.2f})", f"{bb['bc'].f:.4f} ({bb['t']:.2f})"]
    for target in TARGETS:
        r = at_target(rows, "pw", target)
        cells.append(f"{r['pw'].recall:.4f} ({r['t']:.2f})" if r else "-")
    r = at_target(rows, "bc", TARGETS[0])
    cells.append(f"{r['bc'].recall:.4f} ({r['t']:.2f})" if r else "-")
    cells.append(f"{wall:.1f}")
    return "| " + " | ".join(cells) + " |"


HEADER = ("| method | best pairwise F (t) | best BCubed F (t) | pairwise R at P>=0.995 (t) | "
          "pairwise R at P>=0.99 (t) | BCubed R at P>=0.995 (t) | sweep s |\n"
          "|---|---|---|---|---|---|---|")


def keep_half(truth, letters: str) -> None:
    """Keep the truth photos of the people whose name starts with a letter in LO-HI."""
    lo, hi = letters.upper().split("-")
    inside = np.array([lo <= name[:1].upper() <= hi for name in truth.people])
    keep = inside[truth.labels]
    truth.rows, truth.labels = truth.rows[keep], truth.labels[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("truth_root")
    ap.add_argument("methods", nargs="*", default=["graph"])
    ap.add_argument("--grid", type=float, nargs=3, metavar=("LO", "HI", "STEP"),
                    help="threshold grid (default 0.40 0.80 0.01)")
    ap.add_argument("--rows", action="store_true", help="print every threshold's scores")
    ap.add_argument("--people", metavar="A-F", default=None,
                    help="only the people whose folder name starts with a letter in this range "
                         "(their photos are the library clustered and scored): the tuning / "
                         "held-back split of docs/benchmarks.md")
    ap.add_argument("--embeddings", type=Path, default=None,
                    help="a .npy of other embeddings for the cache's faces, in its face order "
                         "(bench/bench_flip.py writes one)")
    a = ap.parse_args()
    grid = GRID if a.grid is None else tuple(np.round(np.arange(a.grid[0], a.grid[1] + 1e-9,
                                                                a.grid[2]), 4))
    cache = load_cache(a.cache)
    if a.embeddings is not None:
        other = np.load(a.embeddings, allow_pickle=False)
        if other.shape != cache.faces["embedding"].shape:
            raise SystemExit(f"{a.embeddings}: shape {other.shape}, the cache's embeddings "
                             f"are {cache.faces['embedding'].shape}")
        cache.faces["embedding"] = other.astype(np.float32)
        print(f"embeddings from {a.embeddings}")
    truth = load_truth(a.truth_root, cache)
    if a.people:
        keep_half(truth, a.people)
    sel, scored = truth_selection(cache, truth)
    signals = face_signals(cache, sel)
    print(truth.line())
    print(f"{len(sel)} faces clustered, {len(scored)} scored, {len(truth.people)} people; "
          f"grid {grid[0]}-{grid[-1]} ({len(grid)} thresholds)")
    methods = ["exact"] + [s for s in a.methods if s != "exact"]
    lines = []
    base = None
    for spec in methods:
        m = parse_method(spec)
        rows, wall = run_method(m, sel, signals, scored, truth.labels, grid)
        if base is None:
            base = rows
        agree = min(pairwise_scores(r["labels"], b["labels"]).f for r, b in zip(rows, base))
        if a.rows:
            print(f"{spec}: unreliable {m['unreliable']}; min pairwise F vs exact over the grid "
                  f"{agree:.4f}")
            print("threshold clusters  pairwise P/R/F            BCubed P/R/F")
            for r in rows:
                print(f"{r['t']:9.3f} {r['k']:8d}  {r['pw'].line()}  {r['bc'].line()}")
        lines.append(summary(m, rows, wall) + f" unreliable {m['unreliable']}")
        print(lines[-1], flush=True)
    print()
    print(HEADER)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
