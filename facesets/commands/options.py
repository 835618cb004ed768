"""Option groups that more than one command takes (a step's own command and `run`), with the
step Params built from them. Every default is read from the step's Params dataclass and every
threshold default from the model table, so help texts cannot drift from the library."""
from __future__ import annotations

import argparse

from ..core.refinement import RefineParams
from ..core.thresholds import (MODEL_THRESHOLDS, ThresholdError, missing_message,
                               missing_thresholds, resolve_threshold)
from ..steps.export import ExportParams
from .common import default_backend, defaults, warn

# thresholds shown in help texts: those of the default model pack
DEFAULT_MODEL = default_backend().DEFAULT_MODEL


def model_threshold(name: str) -> str:
    """The default model's threshold ``name`` as help texts show it (0.40, not 0.4)."""
    return f"{MODEL_THRESHOLDS[DEFAULT_MODEL][name]:.2f}"


REFINE = defaults(RefineParams)
EXPORT = defaults(ExportParams)


def library_default(value) -> str:
    """The help text's default of a gate: the library's setting, else the step's default."""
    return f" (default: the library's setting, else {value})"


def fill_gate_defaults(args) -> None:
    """Gates still None (no flag, no library resolved by the command): the steps' defaults."""
    from ..core.settings import gate_defaults

    for name, value in gate_defaults().items():
        if getattr(args, name, 0) is None:
            setattr(args, name, value)


def add_refine_options(p) -> None:
    """refine's thresholds and gates (also taken by `run`)."""
    p.add_argument("--initial-threshold", type=float, default=None,
                   help="stage-1 clustering distance (model default; "
                        f"{model_threshold('initial')} for {DEFAULT_MODEL})")
    p.add_argument("--merge-threshold", type=float, default=None,
                   help="centroid distance for merging clusters (model default; "
                        f"{model_threshold('merge')} for {DEFAULT_MODEL})")
    p.add_argument("--outlier-threshold", type=float, default=None,
                   help="drop faces farther than this from their centroid "
                        f"(model default; {model_threshold('outlier')} for {DEFAULT_MODEL})")
    p.add_argument("--min-short", type=float, default=None,
                   help="min face short edge in source px for a face to be in a faceset "
                        "(who is in it; export-swap's --min-face-short, larger by default, "
                        "then decides which faces make a sharp swap crop)"
                        + library_default(REFINE["min_short"]))
    p.add_argument("--min-blur", type=float, default=None,
                   help="min sharpness" + library_default(REFINE["min_blur"]))
    p.add_argument("--min-det-score", type=float, default=None,
                   help="min detector score" + library_default(REFINE["min_det_score"]))
    p.add_argument("--min-faces", type=int, default=None,
                   help="min unique source images per faceset"
                        + library_default(REFINE["min_faces"]))


def require_thresholds(given: dict[str, float | None], meta: dict, command: str,
                       cache: str) -> None:
    """Every threshold in ``given`` (name -> flag value) is known, else one error lists all
    that are missing (not one per run)."""
    missing = missing_thresholds(given, meta, given)
    if missing:
        raise ThresholdError(missing_message(missing, meta.get("model") or "?", cache,
                                             command))


def refine_params(args, meta: dict, cache: str = "CACHE") -> RefineParams:
    """RefineParams from add_refine_options' flags (thresholds resolved for the cache)."""
    fill_gate_defaults(args)
    require_thresholds({"initial": args.initial_threshold, "merge": args.merge_threshold,
                        "outlier": args.outlier_threshold}, meta, "refine", cache)
    return RefineParams(
        initial_threshold=resolve_threshold("initial", meta, args.initial_threshold),
        merge_threshold=resolve_threshold("merge", meta, args.merge_threshold),
        outlier_threshold=resolve_threshold("outlier", meta, args.outlier_threshold),
        min_short=args.min_short, min_blur=args.min_blur, min_det_score=args.min_det_score,
        min_faces=args.min_faces, engine=args.engine)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new one's dest and warns once."""

    def __init__(self, option_strings, dest, new_flag: str = "", **kw):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        warn(f"{option_string} is deprecated here: use {self.new_flag} (the same flag as in "
             "`run`; --outlier-threshold is refine's gate)")
        setattr(namespace, self.dest, values)


def add_export_options(p, old_outlier_alias: bool = False) -> None:
    """The gates and sizes of export-swap (also taken by `run`). Its outlier gate is
    --swap-outlier-threshold everywhere (--outlier-threshold is refine's); export-swap still
    takes the old --outlier-threshold as a deprecated alias (``old_outlier_alias``)."""
    g = p.add_argument_group("export-swap")
    g.add_argument("--swap-outlier-threshold", dest="swap_outlier_threshold", type=float,
                   default=None, help="export: drop faces farther than this cosine distance "
                                      "from the faceset centroid (model default; "
                                      f"{model_threshold('swap_outlier')} for {DEFAULT_MODEL})")
    if old_outlier_alias:
        g.add_argument("--outlier-threshold", dest="swap_outlier_threshold", type=float,
                       action=DeprecatedAlias, new_flag="--swap-outlier-threshold",
                       help=argparse.SUPPRESS)
    g.add_argument("--min-face-short", type=float, default=None,
                   help="min face short edge in source px of an exported crop: larger than "
                        "refine's --min-short on purpose, since a crop of a small face is "
                        "upscaled to --out-size and blurs; faces refine kept but smaller than "
                        "this are dropped here (a warning names a faceset left below "
                        "--min-faces)" + library_default(EXPORT["min_face_short"]))
    g.add_argument("--out-size", type=int, default=None,
                   help="crop size in px" + library_default(EXPORT["out_size"]))
    g.add_argument("--pad-ratio", type=float, default=None,
                   help="padding around the face box, share of its size per side"
                        + library_default(EXPORT["pad_ratio"]))
    g.add_argument("--top-n", type=int, default=None,
                   help="faces in the _top bundle" + library_default(EXPORT["top_n"]))
    g.add_argument("--candidate-match-threshold", type=float, default=None,
                   help="singleton-to-centroid cosine distance (model default; "
                        f"{model_threshold('candidate_match')} for {DEFAULT_MODEL})")
    g.add_argument("--candidate-min-score", type=float, default=None,
                   help="min composite quality of a candidate"
                        + library_default(EXPORT["candidate_min_score"]))


def export_params(args, meta: dict, candidates: bool, cache: str = "CACHE") -> ExportParams:
    """ExportParams from add_export_options' flags (thresholds resolved for the cache)."""
    fill_gate_defaults(args)
    if args.out_size < 64 or args.pad_ratio < 0 or args.top_n < 1:
        raise ValueError("--out-size must be >= 64, --pad-ratio >= 0 and --top-n >= 1")
    require_thresholds(dict({"swap_outlier": args.swap_outlier_threshold},
                            **({"candidate_match": args.candidate_match_threshold}
                               if candidates else {})), meta, "export-swap", cache)
    return ExportParams(
        outlier_threshold=resolve_threshold("swap_outlier", meta, args.swap_outlier_threshold),
        min_face_short=args.min_face_short, out_size=args.out_size, pad_ratio=args.pad_ratio,
        top_n=args.top_n, candidates=candidates,
        candidate_match_threshold=(resolve_threshold("candidate_match", meta,
                                                     args.candidate_match_threshold)
                                   if candidates else None),
        candidate_min_score=args.candidate_min_score)
