"""refine CACHE OUT: clean facesets (merge, quality gate, outliers, size filter)."""
from __future__ import annotations

from pathlib import Path

from ..core.thresholds import resolve_threshold
from ..formats.cache import load_cache
from ..io.fsutil import output_lock
from ..steps.calibrate import truth_report
from ..steps.refine import RefineParams, run_refine
from .common import add_engine_option, add_link_option, say


def register(sub) -> None:
    p = sub.add_parser("refine", help="build clean facesets from the cache",
                       description=__doc__)
    p.add_argument("cache")
    p.add_argument("out", help="output folder (replaced whole if made by face-sets)")
    add_refine_options(p)
    add_engine_option(p)
    add_link_option(p)
    p.add_argument("--truth", metavar="TRUTH_ROOT", default=None,
                   help="also score the facesets against hand-sorted person folders")
    p.set_defaults(func=run)


def add_refine_options(p) -> None:
    """refine's thresholds and gates (also taken by `run`)."""
    p.add_argument("--initial-threshold", type=float, default=None,
                   help="stage-1 clustering distance (model default; 0.55 for buffalo_l)")
    p.add_argument("--merge-threshold", type=float, default=None,
                   help="centroid distance for merging clusters (0.40 for buffalo_l)")
    p.add_argument("--outlier-threshold", type=float, default=None,
                   help="drop faces farther than this from their centroid (0.55 buffalo_l)")
    p.add_argument("--min-short", type=float, default=90.0, help="min face short edge, px (90)")
    p.add_argument("--min-blur", type=float, default=40.0, help="min sharpness (40.0)")
    p.add_argument("--min-det-score", type=float, default=0.6, help="min detector score (0.6)")
    p.add_argument("--min-faces", type=int, default=15,
                   help="min unique source images per faceset (15)")


def params_from_args(args, meta: dict) -> RefineParams:
    return RefineParams(
        initial_threshold=resolve_threshold("initial", meta, args.initial_threshold),
        merge_threshold=resolve_threshold("merge", meta, args.merge_threshold),
        outlier_threshold=resolve_threshold("outlier", meta, args.outlier_threshold),
        min_short=args.min_short, min_blur=args.min_blur, min_det_score=args.min_det_score,
        min_faces=args.min_faces, engine=args.engine)


def run(args) -> int:
    cache = load_cache(args.cache)
    params = params_from_args(args, cache.meta)
    with output_lock(args.out):
        m = run_refine(cache, args.cache, Path(args.out), params, args.link)
    s = m["summary"]
    dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items())
    say(f"refine: {s['faces_in']} faces -> {s['facesets']} facesets with {s['faces_kept']} "
        f"faces; dropped: {dropped}; {args.out}")
    if args.truth:  # scored over the faces the facesets kept
        groups = [[f["key"] for f in fs["faces"]] for fs in m["facesets"]]
        for line in truth_report(cache, args.truth, groups):
            say(line)
    return 0
