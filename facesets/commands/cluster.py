"""cluster CACHE OUT: group faces into OUT/person_NNN/, _singletons/, _noface/, manifest.json."""
from __future__ import annotations

from pathlib import Path

from ..core.thresholds import resolve_threshold, threshold_source
from ..formats.cache import load_cache
from ..io.fsutil import output_lock
from ..runtime.pipeline import RunLayout, Step, cache_inputs, option_values
from ..steps.calibrate import drift_warning, truth_report
from ..steps.cluster import mixed_line, run_cluster
from .common import (CACHE_HELP, add_engine_option, add_link_option,
                     add_merge_ratio_option, say, warn)
from .options import DEFAULT_MODEL, model_threshold


def register(sub) -> None:
    p = sub.add_parser("cluster", description=__doc__)
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("out", help="output folder (replaced whole if made by face-sets)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine distance for average linkage (model default; "
                        f"{model_threshold('cluster')} for {DEFAULT_MODEL})")
    add_engine_option(p)
    add_merge_ratio_option(p)
    add_link_option(p)
    p.add_argument("--truth", metavar="TRUTH_ROOT", default=None,
                   help="also score this run against hand-sorted person folders (as calibrate)")
    p.set_defaults(func=run)


def run(args) -> int:
    cache = load_cache(args.cache)
    threshold = resolve_threshold("cluster", cache.meta, args.threshold)
    drift = None if args.threshold is not None else drift_warning(cache, args.cache, threshold)
    if drift:
        warn(drift)
    with output_lock(args.out):
        m = run_cluster(cache, args.cache, Path(args.out), threshold, args.engine, args.link,
                        args.merge_ratio)
    s = m["summary"]
    say(f"cluster: {s['faces']} faces -> {s['persons']} persons, {s['singletons']} singletons, "
        f"{s['noface']} noface, {s['errors']} unreadable; threshold {threshold} "
        f"({threshold_source('cluster', cache.meta, args.threshold)}); {args.out}")
    mixed = mixed_line(m, threshold)
    if mixed:
        say(f"cluster: {mixed}")
    if s["missing_sources"]:
        warn(f"{s['missing_sources']} source files no longer exist; see manifest.json")
    if args.truth:
        groups = [[f["key"] for f in p["faces"]] for p in m["persons"]]
        groups += [[f["key"]] for f in m["singletons"]]
        for line in truth_report(cache, args.truth, groups):
            say(line)
    return 0


def pipeline_step(args, layout: RunLayout) -> Step:
    """cluster as a step of `run`: OUT/raw from the cache."""
    def action() -> dict:
        cache = load_cache(str(layout.cache))
        t = resolve_threshold("cluster", cache.meta, args.threshold)
        drift = None if args.threshold is not None else drift_warning(cache, str(layout.cache), t)
        if drift:
            warn(drift)
        m = run_cluster(cache, str(layout.cache), layout.raw, t, args.engine, args.link,
                        args.merge_ratio)
        say(f"cluster: {m['summary']['persons']} persons, {m['summary']['singletons']} "
            f"singletons; {layout.raw}")
        return m["summary"]

    options = option_values(args, "threshold", "engine", "link", "merge_ratio")
    return Step("cluster", cache_inputs(layout, False, options), layout.raw_manifest, action)
