"""Clustering benchmarks (results and commands in docs/benchmarks.md, "## Clustering").

    python bench/bench_cluster.py quality            # real test faces: exact vs graph vs truth
    python bench/bench_cluster.py sklearn            # sklearn vs engine at 5k, 10k, 20k
    python bench/bench_cluster.py scale --sizes 10000 50000 200000 1000000 [--merge-ratio R]

Every clustering runs in its own subprocess (``_run``) over embeddings saved to disk, so its
wall time and peak memory (ru_maxrss) are its own; the memory of the loaded embeddings alone
is reported beside it. Synthetic embeddings come from bench/synth.py, fitted to the real test
faces when a cache of them is given (``--cache``), else to its built-in fit of them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHARED = ROOT.parent / "shared"
PACK = ["--model", "testpack_s", "--model-root", str(SHARED / "insightface")]
THRESHOLD = 0.65  # testpack_s: separates the 20 test identities; the synthetic set is fitted to it


def _run(args) -> None:
    """Child: cluster saved embeddings with one method; print JSON wall time / peak memory."""
    x = np.load(args.emb)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    timing: dict = {}
    if args.method == "sklearn":
        from sklearn.cluster import AgglomerativeClustering
        labels = AgglomerativeClustering(n_clusters=None, distance_threshold=args.threshold,
                                         metric="cosine", linkage="average").fit_predict(x)
    else:
        from facesets.engine import cluster_faces
        labels = cluster_faces(x, args.threshold, None, engine=args.method, timing=timing,
                               progress=False, merge_ratio=args.merge_ratio)
        # what `cluster` adds after the engine: each cluster's split distance (core/cohesion)
        from facesets.core.cohesion import split_distances
        t1 = time.perf_counter()
        split_distances(x, np.asarray(labels))
        timing["split_s"] = round(time.perf_counter() - t1, 2)
    wall = time.perf_counter() - t0
    np.save(args.labels, np.asarray(labels))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall_s": round(wall, 2), "peak_mb": round(peak / 1024),
                      "loaded_mb": round(base / 1024), "timing": timing}))


def run_method(method: str, emb: Path, threshold: float, work: Path,
               merge_ratio: float = 0.0) -> tuple[dict, np.ndarray]:
    labels = work / f"labels-{method}.npy"
    proc = subprocess.run([sys.executable, __file__, "_run", "--method", method, "--emb",
                           str(emb), "--labels", str(labels), "--threshold", str(threshold),
                           "--merge-ratio", str(merge_ratio)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(labels)


def real_faces(cache: Path | None, work: Path):
    """(embeddings of the centre faces, person labels, all selected embeddings, cannot-link)"""
    from facesets.formats.cache import load_cache
    from facesets.steps.calibrate import truth_selection
    from facesets.core.truth import load_truth
    if cache is None:
        cache = work / "faces.npz"
        subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), "embed",
                        str(SHARED / "testdata" / "faces"), str(cache), *PACK, "--no-progress"],
                       check=True)
    c = load_cache(cache)
    truth = load_truth(SHARED / "testdata" / "faces", c)
    sel, scored = truth_selection(c, truth)
    return sel, scored, truth.labels


def synth_data(n: int, seed: int, stats, work: Path) -> tuple[Path, np.ndarray]:
    import synth
    x, y = synth.generate(n, stats=stats, seed=seed)
    path = work / f"synth-{n}.npy"
    np.save(path, x)
    return path, y


def fitted_stats(cache: Path | None, work: Path):
    import synth
    sel, scored, labels = real_faces(cache, work)
    return synth.fit_stats(sel.embeddings[scored], labels)


def cmd_quality(a) -> None:
    from facesets.engine import cluster_faces
    from facesets.core.metrics import bcubed_scores, pairwise_scores
    import synth
    work = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    sel, scored, truth = real_faces(a.cache, work)
    cl = sel.cannot_link()
    print(f"real: {len(sel)} faces of the 180 test photos, {len(scored)} scored (centre faces),"
          f" {len(np.unique(truth))} people")
    print("threshold | exact vs truth: pairwise F, BCubed F | graph vs truth | graph vs exact")
    for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8):
        e = cluster_faces(sel.embeddings, t, cl, engine="exact")
        g = cluster_faces(sel.embeddings, t, cl, engine="graph")
        print(f"{t:.2f} | {pairwise_scores(e[scored], truth).f:.4f} "
              f"{bcubed_scores(e[scored], truth).f:.4f} | {pairwise_scores(g[scored], truth).f:.4f}"
              f" {bcubed_scores(g[scored], truth).f:.4f} | {pairwise_scores(g, e).f:.4f} "
              f"{bcubed_scores(g, e).f:.4f}")
    for name, labels in alternatives(sel.embeddings, 0.65).items():
        print(f"{name} (eps 0.65 where it has one) vs truth: pairwise F "
              f"{pairwise_scores(labels[scored], truth).f:.4f}, BCubed F "
              f"{bcubed_scores(labels[scored], truth).f:.4f}")
    stats = synth.fit_stats(sel.embeddings[scored], truth)
    print(f"fitted: {stats}")
    for n in a.synth_sizes:
        x, y = synth.generate(n, stats=stats, seed=11)
        for t in (0.55, 0.65, 0.75):
            e = cluster_faces(x, t, engine="exact")
            g = cluster_faces(x, t, engine="graph")
            print(f"synthetic {n} ({len(np.unique(y))} identities) at {t}: exact vs truth "
                  f"{pairwise_scores(e, y).f:.4f}/{bcubed_scores(e, y).f:.4f}, graph vs truth "
                  f"{pairwise_scores(g, y).f:.4f}/{bcubed_scores(g, y).f:.4f}, graph vs exact "
                  f"{pairwise_scores(g, e).f:.4f}/{bcubed_scores(g, e).f:.4f}")
        for name, labels in alternatives(x[:5000], 0.65).items():
            print(f"synthetic first 5000, {name} vs truth: pairwise F "
                  f"{pairwise_scores(labels, y[:5000]).f:.4f}, BCubed F "
                  f"{bcubed_scores(labels, y[:5000]).f:.4f}")


def alternatives(x: np.ndarray, t: float) -> dict[str, np.ndarray]:
    """Other clusterings from the issue's list, on the same embeddings (noise = singletons):
    Immich-style DBSCAN (min 3 faces) on the engine's k-NN graph, and HDBSCAN."""
    from scipy.sparse import coo_matrix
    from sklearn.cluster import DBSCAN, HDBSCAN
    from facesets.engine import normalize_rows
    from facesets.engine.knn import knn_edges
    x = normalize_rows(x)
    n = len(x)
    u, v, d = knn_edges(x, 32, t)
    d = np.maximum(d, 0) + 1e-9  # explicit zeros would read as "no edge"
    g = coo_matrix((np.r_[d, d], (np.r_[u, v], np.r_[v, u])), shape=(n, n)).tocsr()
    out = {}
    for name, labels in (("dbscan", DBSCAN(eps=t, min_samples=3, metric="precomputed")
                          .fit_predict(g)),
                         ("hdbscan", HDBSCAN(min_cluster_size=2, copy=True).fit_predict(x))):
        labels = labels.copy()
        noise = labels < 0
        labels[noise] = labels.max() + 1 + np.arange(noise.sum())
        out[name] = labels
    return out


def cmd_sklearn(a) -> None:
    from facesets.core.metrics import bcubed_scores, pairwise_scores
    work = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    stats = fitted_stats(a.cache, work)
    print("faces | sklearn wall s, peak MB | engine wall s, peak MB (loaded MB) | speed x, "
          "memory / | agreement pairwise F, BCubed F | engine vs truth pairwise F")
    for n in a.sizes:
        emb, y = synth_data(n, 5, stats, work)
        sk, sk_labels = run_method("sklearn", emb, THRESHOLD, work)
        en, en_labels = run_method("auto", emb, THRESHOLD, work)
        print(f"{n} | {sk['wall_s']}, {sk['peak_mb']} | {en['wall_s']}, {en['peak_mb']} "
              f"({en['loaded_mb']}) {en['timing'].get('engine')} | "
              f"{sk['wall_s'] / en['wall_s']:.1f}, {sk['peak_mb'] / en['peak_mb']:.1f} | "
              f"{pairwise_scores(en_labels, sk_labels).f:.4f}, "
              f"{bcubed_scores(en_labels, sk_labels).f:.4f} | "
              f"{pairwise_scores(en_labels, y).f:.4f}", flush=True)


def cmd_scale(a) -> None:
    from facesets.core.metrics import bcubed_scores, pairwise_scores
    work = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    stats = fitted_stats(a.cache, work)
    print("faces | identities | wall s (neighbours, clustering, merge, split) | "
          "peak MB (loaded MB) | "
          "edges, rounds | vs truth pairwise P/R/F, BCubed F")
    for n in a.sizes:
        emb, y = synth_data(n, 3, stats, work)
        r, labels = run_method("graph", emb, THRESHOLD, work, a.merge_ratio)
        os.remove(emb)
        pw = pairwise_scores(labels, y)
        t = r["timing"]
        print(f"{n} | {len(np.unique(y))} | {r['wall_s']} ({t['neighbours_s']}, "
              f"{t['clustering_s']}, {t.get('merge_s', '-')}, {t.get('split_s', '-')}) | "
              f"{r['peak_mb']} "
              f"({r['loaded_mb']}) | {t['edges']}, "
              f"{t['rounds']} | {pw.precision:.4f}/{pw.recall:.4f}/{pw.f:.4f}, "
              f"{bcubed_scores(labels, y).f:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--synth-sizes", type=int, nargs="*", default=[10000])
    s = sub.add_parser("sklearn")
    s.add_argument("--sizes", type=int, nargs="*", default=[5000, 10000, 20000])
    c = sub.add_parser("scale")
    c.add_argument("--sizes", type=int, nargs="*", default=[10000, 50000, 200000, 1000000])
    from facesets.engine import CLUSTER_MERGE_RATIO
    c.add_argument("--merge-ratio", type=float, default=CLUSTER_MERGE_RATIO,
                   help="the centroid merge `cluster` adds (default %(default)s; 0: none)")
    for p in (q, s, c):
        p.add_argument("--cache", type=Path, default=None,
                       help="a cache of ../shared/testdata/faces (else embedded into a temp dir)")
    r = sub.add_parser("_run")
    r.add_argument("--method", required=True)
    r.add_argument("--emb", required=True)
    r.add_argument("--labels", required=True)
    r.add_argument("--threshold", type=float, required=True)
    r.add_argument("--merge-ratio", type=float, default=0.0)
    a = ap.parse_args()
    {"quality": cmd_quality, "sklearn": cmd_sklearn, "scale": cmd_scale, "_run": _run}[a.cmd](a)


if __name__ == "__main__":
    main()
