"""export-swap CACHE REFINE_MANIFEST OUT: ranked single-face crops and .fsz bundles per faceset."""
from __future__ import annotations

from ..core.thresholds import resolve_threshold
from ..formats.cache import load_cache
from ..io.fsutil import output_lock
from ..steps.export import ExportParams, run_export
from .common import add_model_options, add_progress_option, say, warn


def register(sub) -> None:
    p = sub.add_parser("export-swap", help="swap-ready crops and .fsz bundles per faceset",
                       description=__doc__)
    p.add_argument("cache")
    p.add_argument("refine_manifest", help="refine_manifest.json written by `refine`")
    p.add_argument("out", help="output folder (facesets replaced whole if made by face-sets)")
    add_export_options(p)
    p.add_argument("--raw-manifest", default=None,
                   help="manifest.json of `cluster` (needed by --candidates)")
    p.add_argument("--candidates", action="store_true",
                   help="raw singletons near a faceset -> _candidates/to_<faceset>/, the "
                        "rest that group together -> _candidates/new_NNN/")
    add_model_options(p)
    p.set_defaults(model=None)  # the detector of the cache's own model pack
    add_progress_option(p)
    p.set_defaults(func=run)


def add_export_options(p, outlier_flag: str = "--outlier-threshold") -> None:
    """The gates and sizes of export-swap (also taken by `run`, where refine already owns
    --outlier-threshold)."""
    g = p.add_argument_group("export-swap")
    g.add_argument(outlier_flag, dest="swap_outlier_threshold", type=float,
                   default=None, help="drop faces farther than this cosine distance from the "
                                      "faceset centroid (0.45 for buffalo_l)")
    g.add_argument("--min-face-short", type=float, default=100.0,
                   help="min face short edge in source pixels (100)")
    g.add_argument("--out-size", type=int, default=512, help="crop size in px (512)")
    g.add_argument("--pad-ratio", type=float, default=0.5,
                   help="padding around the face box, share of its size per side (0.5)")
    g.add_argument("--top-n", type=int, default=30, help="faces in the _top bundle (30)")
    g.add_argument("--candidate-match-threshold", type=float, default=None,
                   help="singleton-to-centroid cosine distance (0.55 for buffalo_l)")
    g.add_argument("--candidate-min-score", type=float, default=0.40,
                   help="min composite quality of a candidate (0.40)")


def export_params(args, meta: dict, candidates: bool) -> ExportParams:
    if args.out_size < 64 or args.pad_ratio < 0 or args.top_n < 1:
        raise ValueError("--out-size must be >= 64, --pad-ratio >= 0 and --top-n >= 1")
    return ExportParams(
        outlier_threshold=resolve_threshold("swap_outlier", meta, args.swap_outlier_threshold),
        min_face_short=args.min_face_short, out_size=args.out_size, pad_ratio=args.pad_ratio,
        top_n=args.top_n, candidates=candidates,
        candidate_match_threshold=(resolve_threshold("candidate_match", meta,
                                                     args.candidate_match_threshold)
                                   if candidates else None),
        candidate_min_score=args.candidate_min_score)


def detector_loader(args, meta: dict):
    """Loads the detection model of the cache's pack (or --model) for the crop re-check."""
    def load():
        from ..backends import load_backend
        return load_backend(args.model or meta.get("model") or "buffalo_l", args.model_root,
                            args.providers, args.det_size, with_recognition=False)
    return load


def summary_line(top: dict, out) -> str:
    s = top["summary"]
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "none"
    line = (f"export-swap: {s['facesets']} facesets, {s['faces_kept']} of {s['faces_in']} "
            f"faces kept; dropped: {dropped}; {s['sources_decoded']} photos decoded in "
            f"{s['seconds']} s")
    if top["parameters"].get("candidates"):
        line += f"; candidates {s['candidates_to']} to facesets, {s['candidates_new']} new groups"
    return line + f"; {out}"


def run(args) -> int:
    if args.candidates and not args.raw_manifest:
        raise ValueError("--candidates needs --raw-manifest RAW_OUT/manifest.json (the "
                         "manifest of `cluster`)")
    cache = load_cache(args.cache)
    params = export_params(args, cache.meta, args.candidates)
    with output_lock(args.out):
        top = run_export(args.cache, args.refine_manifest, args.out, params,
                         detector_loader(args, cache.meta), args.raw_manifest, args.progress)
    say(summary_line(top, args.out))
    if not top["facesets"]:
        warn("no faceset to export: check refine's output (--min-faces) and the gates")
    return 0
