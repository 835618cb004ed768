"""extend CACHE RAW_OUT [--refine-out REFINE_OUT]: fold newly embedded faces into existing
cluster (and refine) outputs without renumbering; a second run changes nothing."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ..formats.cache import load_cache
from ..io.fsutil import output_lock
from ..steps.extend import run_extend
from .common import CACHE_HELP, add_engine_option, after_run, say, warn


def register(sub) -> None:
    p = sub.add_parser("extend", description=__doc__)
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("raw_out", help="the output folder of `cluster` (its manifest.json)")
    p.add_argument("--refine-out", default=None,
                   help="the output folder of `refine` (its refine_manifest.json), grown too")
    p.add_argument("--threshold", type=float, default=None,
                   help="join a person whose centroid is within this cosine distance, and "
                        "cluster the rest at it (default: calibrated for the cache, else the "
                        "threshold the raw clustering used, else the model's)")
    add_engine_option(p)
    p.set_defaults(func=after_run(run, lambda a: a.raw_out, lambda a: a.refine_out))


def run(args) -> int:
    cache = load_cache(args.cache)
    with ExitStack() as locks:   # both outputs it grows
        for out in filter(None, (args.raw_out, args.refine_out)):
            locks.enter_context(output_lock(out))
        r = run_extend(cache, args.cache, Path(args.raw_out),
                       Path(args.refine_out) if args.refine_out else None, args.threshold,
                       args.engine)
    head = f"extend: {r['new_faces']} new faces; threshold {r['threshold']} " \
           f"({r['threshold_source']})"
    raw = r["raw"]
    if raw is None:
        say(f"{head}; {args.raw_out}: nothing new")
    else:
        say(f"{head}; {args.raw_out}: {sum(raw['joined'].values())} joined "
            f"{len(raw['joined'])} persons, {len(raw['new_persons'])} new persons, "
            f"{raw['singletons']} singletons, {raw['noface']} noface, {raw['errors']} unreadable")
    if args.refine_out:
        ref = r["refine"]
        if ref is None:
            say(f"extend: {args.refine_out}: nothing new")
        else:
            dropped = ", ".join(f"{k} {v}" for k, v in ref["dropped"].items() if v)
            say(f"extend: {args.refine_out}: {ref['faces_considered']} faces considered, "
                f"{sum(ref['joined'].values())} joined {len(ref['joined'])} facesets, "
                f"{len(ref['new_facesets'])} new facesets; dropped: {dropped or 'none'}")
    for path in r["other_cache"]:
        warn(f"{path} was made from another cache file than {args.cache}")
    return 0
