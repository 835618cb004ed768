"""export-swap CACHE REFINE_MANIFEST OUT: ranked single-face crops and .fsz bundles per faceset."""
from __future__ import annotations

from ..formats.cache import load_cache
from ..formats.manifest import REFINE_MANIFEST, ManifestError, load_manifest
from ..io.fsutil import output_lock
from ..runtime.pipeline import RunLayout, Step, cache_inputs, digest, file_digest, option_values
from ..steps.export import run_export
from .common import (CACHE_HELP, add_cache_model_options, add_progress_option, library_model,
                     load_for, say, used_pack_dir, warn)
from .options import add_export_options, export_params


def register(sub) -> None:
    p = sub.add_parser("export-swap", description=__doc__)
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("refine_manifest", help="refine_manifest.json written by `refine`")
    p.add_argument("out", help="output folder (facesets replaced whole if made by face-sets)")
    add_export_options(p, old_outlier_alias=True)
    p.add_argument("--raw-manifest", default=None,
                   help="manifest.json of `cluster` (needed by --candidates)")
    p.add_argument("--candidates", action="store_true",
                   help="raw singletons near a faceset -> _candidates/to_<faceset>/, the "
                        "rest that group together -> _candidates/new_NNN/")
    from ..core.occlusion import IMAGE_THRESHOLD
    p.add_argument("--occlusion-scores", default=None, metavar="SCORES",
                   help="scores of `occlusion merge`: faces scored occluded never reach a "
                        "bundle (default: the scores the last `occlusion apply` on OUT used, "
                        "when that file exists)")
    p.add_argument("--max-occlusion", type=float, default=IMAGE_THRESHOLD,
                   help="drop a face whose occlusion probability (any attribute) reaches "
                        "this, when scores exist (1.01: off)")
    add_cache_model_options(p)   # the detector of the cache's own model pack
    add_progress_option(p)
    p.set_defaults(func=run)


def detector_loader(args, meta: dict, where: str):
    """Loads the detection model of the cache's pack (or --model) for the crop re-check."""
    def load():
        return load_for(args, meta, where, with_recognition=False)
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


def loss_lines(top: dict, out) -> list[str]:
    """Facesets whose export gates took more than a fifth of their faces: how many per
    gate, and the flag value that would keep them (the faces are in its dropped[])."""
    from pathlib import Path

    from ..core.library import Faceset, heavy_loss
    from ..core.swapexport import GATE_FLAGS

    lines = []
    for e in top["facesets"]:
        try:
            fs = Faceset.load(Path(out) / e["name"])
        except (ManifestError, ValueError, OSError):
            continue
        line = heavy_loss("export-swap", e["name"], int(fs.body["summary"].get("faces_in") or 0),
                          fs.dropped, GATE_FLAGS)
        if line:
            lines.append(f"{line} (listed in {Path(out) / e['manifest']})")
    return lines


def thin_warnings(top: dict, refine_manifest) -> list[str]:
    """Facesets that export left with fewer faces than refine's --min-faces: export's own
    gates (--min-face-short, its outlier gate, one face per crop) dropped the rest."""
    try:
        min_faces = int(load_manifest(refine_manifest, REFINE_MANIFEST)["parameters"]
                        .get("min_faces") or 0)
    except (ManifestError, ValueError, TypeError, OSError, KeyError):
        return []
    lines = []
    for fs in top["facesets"]:
        if fs["faces"] < min_faces:
            lines.append(f"{fs['name']} has {fs['faces']} faces after export, fewer than "
                         f"refine's --min-faces {min_faces} ({fs['dropped']} dropped by export's "
                         f"gates; see {fs['manifest']}): lower --min-face-short or "
                         "--swap-outlier-threshold, or leave this faceset out")
    return lines


# export-swap's thresholds a library may have chosen (name -> argparse dest)
EXPORT_THRESHOLDS = {"swap_outlier": "swap_outlier_threshold",
                     "candidate_match": "candidate_match_threshold"}


def library_settings_of(args, meta: dict, params, refine_manifest, resolved,
                        out) -> dict | None:
    """The ``settings`` this export records in its library ``out`` (core/settings.py)."""
    from ..core.settings import export_settings, library_settings
    from ..core.thresholds import threshold_source

    try:
        refine = load_manifest(refine_manifest, REFINE_MANIFEST)
    except (ManifestError, ValueError):
        return None   # run_export refuses it, after its own checks of OUT
    parameters = refine["parameters"] if isinstance(refine.get("parameters"), dict) else {}
    given = {n: getattr(args, d) for n, d in EXPORT_THRESHOLDS.items()}
    return export_settings(meta, params, parameters, resolved,
                           {n: threshold_source(n, meta, v) for n, v in given.items()},
                           getattr(args, "threshold", None),
                           library_settings(out, on_error=lambda m: None), used_pack_dir(args))


def run(args) -> int:
    from ..core.settings import library_settings, resolve_settings

    if args.candidates and not args.raw_manifest:
        raise ValueError("--candidates needs --raw-manifest RAW_OUT/manifest.json (the "
                         "manifest of `cluster`)")
    cache = load_cache(args.cache)
    lib = library_settings(args.out, on_error=warn)
    resolved = resolve_settings(args, lib, EXPORT_THRESHOLDS)
    note = library_model(args, cache.meta, args.cache, lib)
    if note:
        say(f"export-swap: {note}")
    for note in resolved.notes:
        say(f"export-swap: {note}")
    params = export_params(args, cache.meta, args.candidates, args.cache)
    settings = library_settings_of(args, cache.meta, params, args.refine_manifest, resolved,
                                   args.out)
    from ..core.occlusion import scores_for_export
    scores, params.occlusion = scores_for_export(args.out, args.occlusion_scores)
    params.max_occlusion = args.max_occlusion
    if scores:
        say(f"export-swap: faces with an occlusion probability >= {args.max_occlusion} in "
            f"{scores} are dropped")
    with output_lock(args.out):
        top = run_export(args.cache, args.refine_manifest, args.out, params,
                         detector_loader(args, cache.meta, args.cache), args.raw_manifest,
                         args.progress, settings=settings)
    say(summary_line(top, args.out))
    for line in loss_lines(top, args.out):
        say(line)
    for line in thin_warnings(top, args.refine_manifest):
        warn(line)
    if not top["facesets"]:
        warn("no faceset to export: check refine's output (--min-faces) and the gates")
    return 0


def pipeline_step(args, layout: RunLayout) -> Step:
    """export-swap as a step of `run`: OUT/swap_ready from the cache and both manifests."""
    def action() -> dict:
        cache = load_cache(str(layout.cache))
        params = export_params(args, cache.meta, args.candidates,
                               str(layout.cache))
        settings = library_settings_of(args, cache.meta, params, layout.refine_manifest,
                                       getattr(args, "settings_resolved", None),
                                       layout.swap_ready)
        top = run_export(str(layout.cache), layout.refine_manifest, layout.swap_ready, params,
                         detector_loader(args, cache.meta, str(layout.cache)),
                         layout.raw_manifest, args.progress, settings=settings)
        say(summary_line(top, layout.swap_ready))
        for line in loss_lines(top, layout.swap_ready):
            say(line)
        for line in thin_warnings(top, layout.refine_manifest):
            warn(line)
        return {k: v for k, v in top["summary"].items() if k != "dropped"}

    options = option_values(args, "swap_outlier_threshold", "min_face_short", "out_size",
                            "pad_ratio", "top_n", "candidate_match_threshold",
                            "candidate_min_score", "candidates", "model", "model_root")

    def inputs() -> str:   # the enriched cache (quality reads pose) and both manifests
        return digest(cache_inputs(layout, True, options)(), file_digest(layout.refine_manifest),
                      file_digest(layout.raw_manifest))
    return Step("export-swap", inputs, layout.swap_manifest, action)
