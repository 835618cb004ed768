"""eras: split one long-lived identity (any faceset of a swap-ready folder) into facesets by
era, from the faces' embeddings and the photos' EXIF capture dates.

  eras CACHE faceset_NNN --into SWAP_READY [--dry-run]
  eras extend CACHE faceset_NNN --into SWAP_READY [--dry-run]

The first prints a probe of the faceset (pairwise distances, sub-cluster sizes, years per
sub-cluster), recovers the identity's faces from the whole cache, gates and tightens them,
sub-clusters them, attaches small fragments to the nearest large sub-cluster (anchor) when
their centroids are close AND their years agree, and exports each era as a new faceset
faceset_NNN_YYYY-YYYY; eras with too few faces go to SWAP_READY/_thin/. The source faceset
is left as it is. `eras extend` slots faces embedded since into those eras by the same rule.
Both are recorded runs (`history`, `undo`). Capture dates are read once and kept in
CACHE.dates.json, so a re-run after a parameter change reads no photo.
"""
from __future__ import annotations

import argparse

from ..steps.eras import ErasParams
from .common import (CACHE_HELP, add_cache_model_options, add_engine_option,
                     add_progress_option, defaults, library_model, load_for, say)

THRESHOLDS = {"eras_recover": "recover", "eras_tighten": "tighten", "eras_split": "split",
              "eras_attach": "attach"}


def register(sub) -> None:
    p = sub.add_parser("eras", description=__doc__,
                       usage="%(prog)s [extend] CACHE FACESET --into SWAP_READY [--dry-run] "
                             "[options]",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="+", metavar="[extend] CACHE FACESET",
                   help=f"{CACHE_HELP}, and the faceset to split (faceset_NNN); `extend` "
                        "first to slot new faces into its eras")
    p.add_argument("--into", required=True, metavar="SWAP_READY",
                   help="the swap-ready folder holding the faceset (export-swap's output)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the probe and the eras, change nothing in SWAP_READY (the "
                        "capture dates read are still kept beside the cache)")
    d = defaults(ErasParams)
    g = p.add_argument_group("thresholds (cosine distances; default: the model's, buffalo_l "
                             "values shown; eras extend: those of the eras run)")
    g.add_argument("--recover-threshold", type=float, default=None,
                   help="recover the cache's faces this near the faceset's centroid (0.55)")
    g.add_argument("--tighten-threshold", type=float, default=None,
                   help="keep faces this near the re-computed centroid (0.50)")
    g.add_argument("--split-threshold", type=float, default=None,
                   help="sub-cluster at this distance, average linkage (0.35)")
    g.add_argument("--attach-threshold", type=float, default=None,
                   help="a fragment joins its nearest anchor within this (0.40)")
    r = p.add_argument_group("era rules")
    r.add_argument("--min-anchor", type=int, default=None,
                   help=f"faces a sub-cluster needs to be an anchor (default {d['min_anchor']})")
    r.add_argument("--min-era-faces", type=int, default=None,
                   help=f"an era with fewer faces goes to _thin/ (default {d['min_era_faces']})")
    r.add_argument("--year-window", type=int, default=None,
                   help="a fragment's dominant year must be this near its anchor's "
                        f"(default {d['year_window']})")
    q = p.add_argument_group("quality gates (refine's)")
    q.add_argument("--min-short", type=float, default=None,
                   help=f"minimum face short side in px (default {d['min_short']})")
    q.add_argument("--min-blur", type=float, default=None,
                   help=f"minimum sharpness (default {d['min_blur']})")
    q.add_argument("--min-det-score", type=float, default=None,
                   help=f"minimum detector score (default {d['min_det_score']})")
    add_engine_option(p)
    add_cache_model_options(p)   # the detector of the cache's own pack, for the crop check
    add_progress_option(p)
    p.set_defaults(func=run)


def _words(args) -> tuple[bool, str, str]:
    w = list(args.words)
    extend = bool(w) and w[0] == "extend"
    if extend:
        w = w[1:]
    if len(w) != 2:
        raise ValueError("eras needs CACHE FACESET (or `eras extend CACHE FACESET`), e.g. "
                         "`eras faces.npz faceset_001 --into swap_ready`")
    return extend, w[0], w[1]


def params_from(args, meta: dict, recorded: dict | None = None,
                lib=None) -> tuple[ErasParams, list[str]]:
    """The run's parameters: each flag, else (eras extend) what the eras run recorded, else
    the library's setting (``lib``, core/settings.py: refine's gates, chosen thresholds),
    else the model's threshold / the step's default; and a line per threshold saying where
    it came from."""
    from ..core.settings import LibrarySettings, library_threshold

    recorded = recorded or {}
    lib = lib or LibrarySettings()
    values, notes = {}, []
    for name, field in THRESHOLDS.items():
        flag = getattr(args, f"{field}_threshold")
        if flag is None and isinstance(recorded.get(field), (int, float)):
            v, src = float(recorded[field]), "the eras run"
        else:
            v, src = library_threshold(name, meta, flag, lib)
        values[field] = v
        notes.append(f"{field} {v} ({src})")
    d = defaults(ErasParams)
    for field in ("min_anchor", "min_era_faces", "year_window", "min_short", "min_blur",
                  "min_det_score"):
        flag = getattr(args, field)
        if flag is not None:
            values[field] = flag
        elif field in recorded:
            values[field] = recorded[field]
        elif field in lib.gates:   # refine's gates the library was built with
            values[field] = lib.gates[field]
            notes.append(f"{field} {lib.gates[field]} (library)")
        else:
            values[field] = d[field]
    values["engine"] = args.engine
    p = ErasParams(**values)
    if p.attach > p.recover or p.split > p.recover:
        raise ValueError(f"--split-threshold {p.split} / --attach-threshold {p.attach} are "
                         f"looser than --recover-threshold {p.recover}")
    return p, notes


def run(args) -> int:
    from pathlib import Path

    from ..core import runs
    from ..formats.cache import load_cache
    from ..io.fsutil import output_lock
    from ..steps import eras as step

    from ..core.settings import library_settings

    extend, cache_path, source = _words(args)
    root = Path(args.into).resolve()
    cache = load_cache(cache_path)
    lib = library_settings(root)
    note = library_model(args, cache.meta, cache_path, lib)
    if note:
        say(f"eras: {note}")
    log = lambda m: say(f"  {m}")  # noqa: E731
    detector = lambda: load_for(args, cache.meta, cache_path,  # noqa: E731
                                with_recognition=False)
    what = "eras extend" if extend else "eras"
    if extend:
        rec = step.live_eras(root, source)
        if rec is None:
            raise ValueError(f"{source} has no eras in {root}: run `eras` first")
        params, notes = params_from(args, cache.meta, rec["parameters"], lib)
    else:
        params, notes = params_from(args, cache.meta, lib=lib)
    say(f"{what} {source}: " + ", ".join(notes) + f"; anchors >= {params.min_anchor} faces, "
        f"years +-{params.year_window}, eras under {params.min_era_faces} faces to _thin/")

    def plan_and_print():
        plan = (step.plan_extend if extend else step.plan_eras)(
            root, cache_path, source, params, args.progress, cache=cache)
        say(plan.dates.line())
        for line in ([] if extend else step.probe_lines(plan.probe)) + plan.lines():
            say(line)
        return plan

    if args.dry_run:
        plan = plan_and_print()
        say(f"{what} (dry run, nothing changed in {root}): {plan.line()}")
        return 0
    with output_lock(root):
        finished = runs.finish_pending(root, log)
        rec = step.live_eras(root, source)
        if not extend and rec is not None and rec["run"] in finished:
            say(f"eras: finished the interrupted eras run {rec['run']} of {source}; nothing "
                "more to do")
            return 0
        plan = plan_and_print()
        entry = (step.apply_extend if extend else step.apply_eras)(
            plan, detector, args.progress, log)
    for line in [] if extend else plan.export_lines():
        say(line)
    say(f"{what}: {plan.done_line()}" + (f"; run {entry['id']} (undo: `undo {root} "
                                         f"{entry['id']}`)" if entry else "; nothing changed"))
    return 0
