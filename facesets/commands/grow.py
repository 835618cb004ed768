"""library grow SWAP_READY CACHE: add the faces of CACHE that the library does not know yet (undoable, one recorded run).

Each new face joins the faceset it is nearest to by extend's rule (average distance within
--threshold, the cluster distance; within --swap-outlier-threshold of its centroid; no face
of the same photo there), whatever made that faceset, and passes export-swap's gates
(--min-face-short, one face per photo, near duplicates) or goes to its dropped[]. The rest,
except faces within --centroid-near of a faceset, are clustered with refine's stages and
gates and become new facesets numbered past the highest. No faceset is renumbered or
renamed; faces dropped by hand never come back. Every setting defaults to the library's.
"""
from __future__ import annotations

from .common import (CACHE_HELP, add_cache_model_options, add_engine_option,
                     add_progress_option, library_inputs, load_for, recorded_run, say)
from .options import (NEW_IDENTITY_THRESHOLDS, add_export_options, add_flag,
                      add_refine_options, export_params, refine_params)


def register(sub) -> None:
    p = sub.add_parser("grow", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="swap-ready library (export-swap's "
                                                         "output, OUT/swap_ready of `run`)")
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("--threshold", type=float, default=None,
                   help="the clustering distance; here a face joins a faceset when its average "
                        "cosine distance to the faceset's faces is within it (default: the "
                        "library's cluster threshold, else the model's)")
    add_flag(p, "--centroid-near", type=float, default=None,
             more=" (here: left out, not made a new identity; default: the model's; "
                  "buffalo_l 0.45)")
    add_refine_options(p)
    add_engine_option(p)
    add_export_options(p)
    add_cache_model_options(p)
    add_progress_option(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=run)


def grow_params(args, meta: dict, cache: str, lib):
    """GrowParams from the flags, the library's settings and the cache (thresholds
    resolved); the lines saying where they came from; what the flags chose (for the library
    to record)."""
    from ..core.settings import flag_choices, library_threshold, resolve_settings
    from ..steps.grow import GrowParams

    resolved = resolve_settings(args, lib, NEW_IDENTITY_THRESHOLDS, meta=meta)
    join, join_src = library_threshold("cluster", meta, args.threshold, lib)
    near, near_src = library_threshold("discover_near", meta,
                                       getattr(args, "centroid_near", None), lib)
    p = GrowParams(join, near, refine_params(args, meta, cache),
                   export_params(args, meta, False, cache))
    lines = [f"joining within {join} ({join_src}) and {p.export.outlier_threshold} of a "
             f"centroid; near a faceset within {near} ({near_src}); new identities clustered "
             f"at {p.refine.initial_threshold}, at least {p.refine.min_faces} photos; crops of "
             f"faces of at least {p.export.min_face_short} px"] + resolved.notes
    chosen = flag_choices(args, resolved, NEW_IDENTITY_THRESHOLDS, ("cluster", join, join_src),
                          ("discover_near", near, near_src))
    return p, lines, chosen


def run(args) -> int:
    from ..steps.grow import apply_grow, gate_grow, plan_grow

    root, cache, lib = library_inputs(args, "grow")
    meta = cache.meta
    params, lines, chosen = grow_params(args, meta, args.cache, lib)
    for line in lines:
        say(f"grow: {line}")

    def plan():
        p = plan_grow(root, args.cache, params, cache=cache)
        return gate_grow(p) if args.dry_run else p

    def apply(p, log):
        return apply_grow(p, lambda: load_for(args, meta, args.cache, with_recognition=False),
                          args.progress, log)

    recorded_run(root, "grow", plan, apply, args.dry_run, settings=chosen)
    return 0
