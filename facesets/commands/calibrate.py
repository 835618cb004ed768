"""calibrate CACHE TRUTH_ROOT: measure thresholds on hand-sorted folders (one per person).

Sweeps cluster and refine thresholds over the cached faces of TRUTH_ROOT's photos (matched by
content, so copies anywhere count), prints pairwise and BCubed precision / recall / F per
threshold and recommends thresholds; --save stores them in the cache, where later cluster /
refine / extend / export-swap runs take them as defaults (explicit flags still win).
The cluster threshold is chosen for the library it will serve: the pairwise precision each
threshold is predicted to reach at the size of the whole cache is printed beside the truth
set's figures, and the pick is lowered until that prediction meets --target-precision (a few
well-separated people cannot show the mixes of thousands); a later cluster / run warns when
the library has grown and the prediction has fallen below it.

calibrate --estimate CACHE (no TRUTH_ROOT): estimate the thresholds from the cache's faces
alone (the modes of the nearest-neighbour distances, steps/estimate.py) and record them in the
cache, for a model without built-in thresholds when no hand-sorted folders exist; refused,
with the reason, when the distances do not allow a trustworthy estimate. `run` does this by
itself for such a model. Calibrated values and a model's built-in ones win over estimated ones.
"""
from __future__ import annotations

from ..core.selection import select_faces
from ..core.thresholds import FLAGS, MODEL_THRESHOLDS
from ..formats.cache import load_cache, update_meta
from ..steps.calibrate import LIBRARY_HEADER, SWEEP_HEADER, TARGET_PRECISION, calibrate
from ..steps.estimate import EstimateError, cluster_estimate, estimate
from .common import CACHE_HELP, add_engine_option, add_merge_ratio_option, say, warn


def register(sub) -> None:
    p = sub.add_parser("calibrate", description=__doc__)
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("truth_root", nargs="?", default=None,
                   help="folder with one sub-folder of photos per person (not with --estimate)")
    p.add_argument("--save", action="store_true",
                   help="store the recommended thresholds in the cache as its defaults")
    p.add_argument("--estimate", action="store_true",
                   help="no TRUTH_ROOT: estimate the thresholds from the cache's faces alone "
                        "and record them in it (refused when they cannot be trusted)")
    p.add_argument("--target-precision", type=float, default=TARGET_PRECISION,
                   help="recommend the most lenient cluster threshold whose pairwise "
                        "precision on the truth faces stays at least this, plus a margin for "
                        f"the truth set's size (default {TARGET_PRECISION}; 0: the best-F "
                        "threshold)")
    add_engine_option(p)
    add_merge_ratio_option(p)
    p.set_defaults(func=run)


def run_estimate(args) -> int:
    if args.truth_root:
        raise ValueError("calibrate --estimate takes no TRUTH_ROOT: with truth folders, "
                         f"measure instead: `calibrate {args.cache} {args.truth_root} --save`")
    cache = load_cache(args.cache)
    est = estimate(cache, args.cache, args.engine)
    for line in est.lines:
        say(line)
    update_meta(args.cache, estimate=est.record())
    rec = ", ".join(f"{k} {v}" for k, v in est.thresholds.items())
    say(f"calibrate: ESTIMATED (no truth folders) {rec}; recorded in {args.cache}: later "
        "runs use them where no flag, calibrated value or model default is given")
    model = cache.meta.get("model")
    if cache.meta.get("thresholds"):
        warn(f"{args.cache} has calibrated thresholds: they win over this estimate")
    elif model in MODEL_THRESHOLDS:
        warn(f"model '{model}' has built-in thresholds: they win over this estimate")
    return 0


def run(args) -> int:
    if args.estimate:
        return run_estimate(args)
    if not args.truth_root:
        raise ValueError("calibrate needs TRUTH_ROOT (one folder of photos per person), or "
                         f"--estimate to estimate from the faces alone: `calibrate --estimate "
                         f"{args.cache}`")
    cache = load_cache(args.cache)
    if not 0.0 <= args.target_precision < 1.0:
        raise ValueError(f"--target-precision {args.target_precision}: give a precision in "
                         "[0, 1) (0: the best-F threshold)")
    try:   # the cache-only estimate: calibrate says why when it goes above it
        estimated = cluster_estimate(select_faces(cache), args.cache)[0]
    except EstimateError:
        estimated = None
    cal = calibrate(cache, args.truth_root, args.engine, args.target_precision, args.merge_ratio,
                    estimated)
    say(cal.truth.line())
    say(f"cluster threshold sweep over {cal.faces} faces of the truth photos; library P: "
        f"pairwise precision predicted for the whole cache ({cal.library_faces} faces; "
        "docs/clustering.md, \"Calibration at library scale\"):")
    say(SWEEP_HEADER + LIBRARY_HEADER)
    for row in cal.cluster_rows:
        mark = " *" if row.threshold == cal.thresholds["cluster"] else ""
        mark += " (best F)" if row is cal.best_f else ""
        say(row.line() + mark)
    say(f"refine merge sweep (initial {cal.thresholds['initial']}):")
    say(SWEEP_HEADER)
    for row in cal.merge_rows:
        mark = " *" if row.threshold == cal.thresholds["merge"] else ""
        say(row.line() + mark)
    say("join-nearest-centroid sweep (extend, candidates; leave-one-out):")
    for t, s in cal.assign_rows:
        mark = " *" if t == cal.thresholds["extend"] else ""
        say(f"{t:9.3f}   {s.line()}{mark}")
    for note in cal.notes:
        say(note)
    rec = ", ".join(f"{k} {v}" for k, v in cal.thresholds.items())
    best = next(r for r in cal.cluster_rows if r.threshold == cal.thresholds["cluster"])
    bf = cal.best_f
    if cal.target_precision > 0:
        say(f"cluster {best.threshold} for pairwise precision >= {cal.target_precision} "
            f"(+{cal.target_margin:.4f} margin for {best.grouped} grouped truth faces): "
            f"P {best.pairwise.precision:.4f}, recall {best.pairwise.recall:.4f} on the truth "
            f"set; predicted P {best.library:.4f} at the library's {cal.library_faces} "
            f"faces{' (estimate: ' + str(estimated) + ')' if estimated else ''}; costs "
            f"{bf.pairwise.recall - best.pairwise.recall:.4f} recall against the best F at "
            f"{bf.threshold}: P {bf.pairwise.precision:.4f} R {bf.pairwise.recall:.4f} "
            f"F {bf.pairwise.f:.4f}")
    say(f"calibrate: recommended {rec}; cluster at {best.threshold}: pairwise F "
        f"{best.pairwise.f:.4f}, BCubed F {best.bcubed.f:.4f}")
    if args.save:
        update_meta(args.cache, thresholds=dict(cal.thresholds),
                    calibration={"truth_root": str(args.truth_root),
                                 "faces_scored": int(len(cal.truth.rows)),
                                 "people": len(cal.truth.people),
                                 "pairwise_f": round(best.pairwise.f, 4),
                                 "pairwise_precision": round(best.pairwise.precision, 4),
                                 "pairwise_recall": round(best.pairwise.recall, 4),
                                 "target_precision": cal.target_precision,
                                 "bcubed_f": round(best.bcubed.f, 4),
                                 "library_precision": round(best.library, 4),
                                 "scale": cal.scale})
        say(f"saved to {args.cache}: later runs use them unless a flag is given "
            f"({', '.join(sorted(set(FLAGS.values())))})")
    return 0
