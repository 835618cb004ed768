"""library import (was import-folders): hand-sorted folders (one per person, the folder name is
the label) become new facesets of a swap-ready library (undoable).

Each ROOT is a folder of person folders (or one person folder itself); their photos must be
in CACHE (`embed` them first: copies of photos already embedded are only recorded as
aliases). Per folder, the identity is found by two-pass outlier rejection (faces within
--loose-threshold of the folder's mean, then within --tight-threshold of their mean), so
bystanders of group photos drop out; then the same export as export-swap makes a new
faceset_NNN numbered past the library's highest, its bundles named after the folder and
the label in NAME.txt, added to SWAP_READY's top-level manifest without touching the other
facesets. --route MIXED_ROOT: every face under it joins the nearest identity within
--route-threshold (a group photo can feed several facesets, each takes its own face).
SWAP_READY may be a new folder. A folder imported before is skipped.
"""
from __future__ import annotations

from ..steps.import_folders import ImportParams
from .common import (CACHE_HELP, add_cache_model_options, add_progress_option, defaults,
                     library_inputs, load_for, recorded_run, say)
from .options import add_export_options, add_flag, add_old_spelling, export_params


def register(sub) -> None:
    p = sub.add_parser("import-folders", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY",
                   help="swap-ready library (export-swap's output, or a new folder)")
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("roots", nargs="+", metavar="ROOT",
                   help="folder of person folders (or one person folder)")
    p.add_argument("--route", default=None, metavar="MIXED_ROOT",
                   help="mixed folder whose faces join the nearest identity")
    p.add_argument("--loose-threshold", type=float, default=None,
                   help="first pass: cosine distance from the folder's mean (default: the "
                        "model's; buffalo_l 0.55)")
    p.add_argument("--tight-threshold", type=float, default=None,
                   help="second pass: distance from the re-computed centroid (default: the "
                        "model's; buffalo_l 0.45)")
    p.add_argument("--route-threshold", type=float, default=None,
                   help="--route: a face joins an identity within this distance (default: "
                        "the model's; buffalo_l 0.45)")
    add_flag(p, "--min-kept", type=int, default=defaults(ImportParams)["min_faces"])
    add_old_spelling(p, "--min-faces", "--min-kept", " (--min-faces is refine's photos per "
                     "faceset)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    add_export_options(p)
    add_cache_model_options(p)
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.newsets import ensure_library
    from ..core.settings import flag_choices, library_threshold, resolve_settings
    from ..steps.import_folders import apply_import, gate_import, plan_import

    root, cache, lib = library_inputs(args, "library import")
    meta = cache.meta
    thresholds = {"swap_outlier": "swap_outlier_threshold"}   # settings name -> flag's dest
    resolved = resolve_settings(args, lib, thresholds)
    got = {n: library_threshold(n, meta, v, lib) for n, v in (
        ("import_loose", args.loose_threshold), ("import_tight", args.tight_threshold))}
    if args.route:
        got["route"] = library_threshold("route", meta, args.route_threshold, lib)
    params = ImportParams(got["import_loose"][0], got["import_tight"][0],
                          got.get("route", (None, ""))[0], args.min_kept)
    export = export_params(args, meta, False, args.cache)
    say("library import: " + ", ".join(f"{n} {v} ({src})" for n, (v, src) in got.items())
        + f", export outlier gate {export.outlier_threshold}, min face "
        f"{export.min_face_short} px")
    for note in resolved.notes:
        say(f"library import: {note}")

    def plan():
        return gate_import(plan_import(root, args.cache, args.roots, params, args.route,
                                       cache=cache), export)

    def apply(p, log):
        return apply_import(p, export, lambda: load_for(args, meta, args.cache,
                                                        with_recognition=False),
                            args.progress, log)

    def new_library():   # a library made here records the settings it was made with
        from ..core.settings import export_settings
        from ..core.thresholds import threshold_source

        ensure_library(root, args.cache, meta, export_settings(
            meta, export, {}, resolved, {"swap_outlier": threshold_source(
                "swap_outlier", meta, args.swap_outlier_threshold)}))

    recorded_run(root, "library import", plan, apply, args.dry_run, before=new_library,
                 settings=flag_choices(args, resolved, thresholds,
                                       *((n, v, src) for n, (v, src) in got.items())))
    return 0
