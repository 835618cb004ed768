"""Option groups that more than one command takes (a step's own command and `run`), with the
step Params built from them. Every default is read from the step's Params dataclass and every
threshold default from the model table, so help texts cannot drift from the library.

FLAGS is the registry of flag meanings: a flag name means one thing in every command that
takes it (tests/test_cli_groups.py builds every parser and checks). A renamed flag keeps its
old spelling as a hidden alias that warns (``add_old_spelling``).

Light to import (no numpy): the commands that change a library import it for their --help,
so the step defaults and the default model are read on first use (``__getattr__``)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, NamedTuple

from ..core.thresholds import (MODEL_THRESHOLDS, ThresholdError, missing_message,
                               missing_thresholds, resolve_threshold)
from .common import default_backend, defaults, warn

if TYPE_CHECKING:
    from ..core.refinement import RefineParams
    from ..steps.export import ExportParams


class Flag(NamedTuple):
    dest: str
    meaning: str   # every help text of the flag starts with it


# flag name -> its one meaning; a flag more than one command takes, or one the issue 24
# clashes renamed, is here and is added with add_flag
FLAGS: dict[str, Flag] = {
    "--merge-threshold": Flag("merge_threshold",
                              "refine: centroid distance for merging clusters"),
    "--group-threshold": Flag("group_threshold",
                              "consolidate: cosine distance between centroids to group "
                              "facesets"),
    "--confident-threshold": Flag("confident_threshold",
                                  "consolidate: cosine distance within which a whole group "
                                  "is merged"),
    "--centroid-near": Flag("centroid_near",
                            "faces within this cosine distance of a faceset's centroid are "
                            "left to extend"),
    "--max-distance": Flag("max_distance",
                           "cosine distance within which two faces are near duplicates"),
    "--split-threshold": Flag("split_threshold",
                              "split: cosine distance of the tight re-clustering of one "
                              "faceset"),
    "--subcluster-threshold": Flag("subcluster_threshold",
                                   "eras: sub-cluster at this distance, average linkage"),
    "--min-faces": Flag("min_faces", "refine: min unique source images per faceset"),
    "--min-part": Flag("min_part", "split: smallest part (in faces) that becomes a faceset"),
    "--min-kept": Flag("min_kept", "import: a folder left with fewer faces after the two "
                                   "passes is skipped"),
    "--to": Flag("to", "the faceset (faceset_NNN) the faces move into"),
}

# flags several commands take whose help texts word one meaning differently (each command
# says it its way, e.g. which plan --dry-run prints): the meaning they share
SAME_MEANING: dict[str, str] = {
    "--dry-run": "print what the command would do, change nothing",
    "--no-progress": "no progress bar (plain lines)",
    "--model": "the InsightFace model pack, or a folder of its ONNX files",
    "--model-root": "the folder holding models/<name>/",
    "--cache": "the face-sets cache (.npz) to read",
    "--candidates": "also export singleton candidates",
    "--flush-every": "files between two appends to the cache",
    "--fp16": "the CLIP graph in float16",
    "--max-pixels": "the decoder's pixel cap",
    "--min-blur": "refine's sharpness gate",
    "--min-det-score": "the detector score gate",
    "--min-face-short": "the face short edge gate of a swap crop or clip, px",
    "--min-short": "refine's face short edge gate, px",
    "--out": "the `run` output holding swap_ready/",
    "--root": "the Immich stage root",
    "--truth": "hand-sorted person folders to score against",
    "--user": "the Immich library label",
    "--workers": "threads or processes working in parallel",
    # cluster, run and extend: the clustering distance (extend clusters on from it); the
    # video track distance is --track-threshold
    "--threshold": "the clustering distance",
}


def add_flag(p, name: str, more: str = "", **kw) -> argparse.Action:
    """Add the registered flag ``name`` (its dest, its meaning + ``more`` as help)."""
    flag = FLAGS[name]
    return p.add_argument(name, dest=flag.dest, help=flag.meaning + more, **kw)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new one's dest and warns once."""

    def __init__(self, option_strings, dest, new_flag: str = "", why: str = "", **kw):
        self.new_flag, self.why = new_flag, why
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        warn(f"{option_string} is deprecated here: use {self.new_flag}{self.why}")
        setattr(namespace, self.dest, values)


def add_old_spelling(p, old: str, new: str, why: str = "") -> None:
    """``old``, today's spelling of the option ``new`` (added to ``p`` before), as a hidden
    alias: the same dest and type, one deprecation line on stderr when used."""
    action = next(a for a in p._actions if new in a.option_strings)
    p.add_argument(old, dest=action.dest, type=action.type, action=DeprecatedAlias,
                   new_flag=new, why=why, help=argparse.SUPPRESS)


def __getattr__(name: str):
    """DEFAULT_MODEL (thresholds shown in help texts: those of the default model pack),
    REFINE and EXPORT (the steps' defaults), read when first used."""
    if name == "DEFAULT_MODEL":
        return default_backend().DEFAULT_MODEL
    if name == "REFINE":
        return refine_defaults()
    if name == "EXPORT":
        return export_defaults()
    raise AttributeError(name)


def refine_defaults() -> dict:
    from ..core.refinement import RefineParams
    return defaults(RefineParams)


def export_defaults() -> dict:
    from ..steps.export import ExportParams
    return defaults(ExportParams)


def model_threshold(name: str) -> str:
    """The default model's threshold ``name`` as help texts show it (0.40, not 0.4)."""
    return f"{MODEL_THRESHOLDS[default_model()][name]:.2f}"


def default_model() -> str:
    return default_backend().DEFAULT_MODEL


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
    REFINE = refine_defaults()
    p.add_argument("--initial-threshold", type=float, default=None,
                   help="stage-1 clustering distance (model default; "
                        f"{model_threshold('initial')} for {default_model()})")
    add_flag(p, "--merge-threshold", type=float, default=None,
             more=f" (model default; {model_threshold('merge')} for {default_model()})")
    p.add_argument("--outlier-threshold", type=float, default=None,
                   help="drop faces farther than this from their centroid "
                        f"(model default; {model_threshold('outlier')} for {default_model()})")
    p.add_argument("--min-short", type=float, default=None,
                   help="min face short edge in source px for a face to be in a faceset "
                        "(who is in it; export-swap's --min-face-short, larger by default, "
                        "then decides which faces make a sharp swap crop)"
                        + library_default(REFINE["min_short"]))
    p.add_argument("--min-blur", type=float, default=None,
                   help="min sharpness" + library_default(REFINE["min_blur"]))
    p.add_argument("--min-det-score", type=float, default=None,
                   help="min detector score" + library_default(REFINE["min_det_score"]))
    add_flag(p, "--min-faces", type=int, default=None,
             more=library_default(REFINE["min_faces"]))


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
    from ..core.refinement import RefineParams

    fill_gate_defaults(args)
    require_thresholds({"initial": args.initial_threshold, "merge": args.merge_threshold,
                        "outlier": args.outlier_threshold}, meta, "refine", cache)
    return RefineParams(
        initial_threshold=resolve_threshold("initial", meta, args.initial_threshold),
        merge_threshold=resolve_threshold("merge", meta, args.merge_threshold),
        outlier_threshold=resolve_threshold("outlier", meta, args.outlier_threshold),
        min_short=args.min_short, min_blur=args.min_blur, min_det_score=args.min_det_score,
        min_faces=args.min_faces, engine=args.engine)


def add_export_options(p, old_outlier_alias: bool = False) -> None:
    """The gates and sizes of export-swap (also taken by `run`). Its outlier gate is
    --swap-outlier-threshold everywhere (--outlier-threshold is refine's); export-swap still
    takes the old --outlier-threshold as a deprecated alias (``old_outlier_alias``)."""
    EXPORT = export_defaults()
    g = p.add_argument_group("export-swap")
    g.add_argument("--swap-outlier-threshold", dest="swap_outlier_threshold", type=float,
                   default=None, help="export: drop faces farther than this cosine distance "
                                      "from the faceset centroid (model default; "
                                      f"{model_threshold('swap_outlier')} for {default_model()})")
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
                        f"{model_threshold('candidate_match')} for {default_model()})")
    g.add_argument("--candidate-min-score", type=float, default=None,
                   help="min composite quality of a candidate"
                        + library_default(EXPORT["candidate_min_score"]))


def export_params(args, meta: dict, candidates: bool, cache: str = "CACHE") -> ExportParams:
    """ExportParams from add_export_options' flags (thresholds resolved for the cache)."""
    from ..steps.export import ExportParams

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


def add_consolidate_thresholds(p, more: str = "") -> None:
    """consolidate's two distances (also the review page's merge suggestions); the old
    --merge-threshold (refine's clusters elsewhere) is a hidden alias of the second."""
    add_flag(p, "--group-threshold", type=float, default=None,
             more=f"{more} (default: the model's; buffalo_l 0.45, i.e. similarity 0.55)")
    add_flag(p, "--confident-threshold", type=float, default=None,
             more=f"{more} (default: the model's; buffalo_l 0.35, i.e. similarity 0.65)")
    add_old_spelling(p, "--merge-threshold", "--confident-threshold",
                     " (--merge-threshold is refine's centroid merge)")


# the thresholds (settings name -> argparse dest) of the commands that make new identities
# out of cached faces with refine's stages and export's gates (discover, library grow)
NEW_IDENTITY_THRESHOLDS = {"initial": "initial_threshold", "merge": "merge_threshold",
                           "outlier": "outlier_threshold",
                           "swap_outlier": "swap_outlier_threshold"}
