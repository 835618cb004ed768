"""refine CACHE OUT: clean facesets (merge, quality gate, outliers, size filter)."""
from __future__ import annotations

from pathlib import Path

from ..formats.cache import load_cache
from ..io.fsutil import output_lock
from ..runtime.pipeline import RunLayout, Step, cache_inputs, option_values
from ..steps.calibrate import truth_report
from ..steps.refine import run_refine
from .common import add_engine_option, add_link_option, say
from .options import add_refine_options, refine_params


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


def run(args) -> int:
    cache = load_cache(args.cache)
    params = refine_params(args, cache.meta)
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


def pipeline_step(args, layout: RunLayout) -> Step:
    """refine as a step of `run`: OUT/facesets from the cache."""
    def action() -> dict:
        cache = load_cache(str(layout.cache))
        m = run_refine(cache, str(layout.cache), layout.facesets, refine_params(args, cache.meta),
                       args.link)
        say(f"refine: {m['summary']['facesets']} facesets, {m['summary']['faces_kept']} "
            f"faces; {layout.facesets}")
        return {k: v for k, v in m["summary"].items() if k != "dropped"}

    options = option_values(args, "initial_threshold", "merge_threshold", "outlier_threshold",
                            "min_short", "min_blur", "min_det_score", "min_faces", "engine",
                            "link")
    return Step("refine", cache_inputs(layout, False, options), layout.refine_manifest, action)
