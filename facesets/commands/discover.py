"""library discover: new identities in a mixed folder, added to a swap-ready library (undoable).

The faces of SRC_ROOT (photos under it, or copies of them, in CACHE) that no faceset names
yet: those within --centroid-near of an existing faceset's centroid are left to `extend`;
the rest are clustered with refine's stages and gates (--initial-threshold,
--merge-threshold, --outlier-threshold, --min-short, --min-blur, --min-det-score,
--min-faces) and each cluster becomes a new faceset_NNN (numbered past the highest) through
export-swap's gates and crops, with a provenance record (`added[]`) in the top-level
manifest. --dry-run prints the clusters and their sizes.
"""
from __future__ import annotations

from .common import (CACHE_HELP, add_cache_model_options, add_engine_option,
                     add_progress_option, library_inputs, load_for, recorded_run, say)
from .options import (NEW_IDENTITY_THRESHOLDS, add_export_options, add_flag,
                      add_old_spelling, add_refine_options, export_params, refine_params)


def register(sub) -> None:
    p = sub.add_parser("discover", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY",
                   help="swap-ready library (export-swap's output)")
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("src_root", metavar="SRC_ROOT", help="mixed folder (its photos in CACHE)")
    add_flag(p, "--centroid-near", type=float, default=None,
             more=" (default: the model's; buffalo_l 0.45)")
    add_old_spelling(p, "--near-threshold", "--centroid-near",
                     " (--max-distance is a duplicate distance)")
    add_refine_options(p)
    add_engine_option(p)
    add_export_options(p)
    add_cache_model_options(p)
    add_progress_option(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the clusters and their sizes, change nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.settings import flag_choices, library_threshold, resolve_settings
    from ..steps.discover import apply_discover, gate_discover, plan_discover

    root, cache, lib = library_inputs(args, "discover")
    meta = cache.meta
    resolved = resolve_settings(args, lib, NEW_IDENTITY_THRESHOLDS, meta=meta)
    near, src = library_threshold("discover_near", meta, args.centroid_near, lib)
    refine = refine_params(args, meta, args.cache)
    export = export_params(args, meta, False, args.cache)
    say(f"discover: near a faceset within {near} ({src}); clustering at "
        f"{refine.initial_threshold}, merge {refine.merge_threshold}, outlier gate "
        f"{refine.outlier_threshold}, at least {refine.min_faces} photos, faces of at least "
        f"{refine.min_short} px, crops of faces of at least {export.min_face_short} px")
    for note in resolved.notes:
        say(f"discover: {note}")

    def plan():
        p = plan_discover(root, args.cache, args.src_root, near, refine, cache=cache)
        return gate_discover(p, export) if not args.dry_run else p

    def apply(p, log):
        return apply_discover(p, export, lambda: load_for(args, meta, args.cache,
                                                          with_recognition=False),
                              args.progress, log)

    recorded_run(root, "discover", plan, apply, args.dry_run, settings=flag_choices(
        args, resolved, NEW_IDENTITY_THRESHOLDS, ("discover_near", near, src)))
    return 0
