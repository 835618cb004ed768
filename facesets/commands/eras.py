"""faceset eras: split one long-lived identity (any faceset of a swap-ready folder) into
facesets by era, from the faces' embeddings and the photos' EXIF capture dates.

  faceset eras build SWAP_READY CACHE faceset_NNN [--dry-run]
  faceset eras extend SWAP_READY CACHE faceset_NNN [--dry-run]

The first prints a probe of the faceset (pairwise distances, sub-cluster sizes, years per
sub-cluster), recovers the identity's faces from the whole cache, gates and tightens them,
sub-clusters them, attaches small fragments to the nearest large sub-cluster (anchor) when
their centroids are close AND their years agree, and exports each era as a new faceset
faceset_NNN_YYYY-YYYY; eras with too few faces go to SWAP_READY/_thin/. The source faceset
is left as it is. `faceset eras extend` slots faces embedded since into those eras by the
same rule. Both are recorded runs (`library history`, `library undo`). Capture dates are
read once and kept in CACHE.dates.json, so a re-run after a parameter change reads no photo.
"""
from __future__ import annotations

import argparse

from ..steps.eras import ErasParams
from .options import add_flag, add_old_spelling
from .common import (CACHE_HELP, add_cache_model_options, add_engine_option,
                     add_progress_option, defaults, library_model, load_for, say)

THRESHOLDS = {"eras_recover": "recover", "eras_tighten": "tighten", "eras_split": "split",
              "eras_attach": "attach"}
FLAG_OF = {"split": "subcluster"}   # eras' split threshold is --subcluster-threshold


def register(sub) -> None:
    p = sub.add_parser("eras", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="eras_verb", metavar="VERB")
    verbs.required = True
    for verb, text in (("build", "split the faceset into facesets by era"),
                       ("extend", "slot faces embedded since into the faceset's eras")):
        _add_options(verbs.add_parser(verb, help=text, description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter))


def _add_options(p) -> None:
    p.add_argument("swap_ready", metavar="SWAP_READY",
                   help="the swap-ready folder holding the faceset (export-swap's output)")
    p.add_argument("cache", metavar="CACHE", help=CACHE_HELP)
    p.add_argument("faceset", metavar="FACESET", help="the faceset (faceset_NNN)")
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
    add_flag(g, "--subcluster-threshold", type=float, default=None, more=" (0.35)")
    add_old_spelling(g, "--split-threshold", "--subcluster-threshold",
                     " (--split-threshold is split's re-clustering distance)")
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
        flag = getattr(args, f"{FLAG_OF.get(field, field)}_threshold")
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
        raise ValueError(f"--subcluster-threshold {p.split} / --attach-threshold {p.attach} are "
                         f"looser than --recover-threshold {p.recover}")
    return p, notes


def run(args) -> int:
    from pathlib import Path

    from ..core.library import Library
    from ..core.settings import library_settings
    from ..formats.cache import load_cache
    from ..steps import eras as step

    extend, cache_path, source = args.eras_verb == "extend", args.cache, args.faceset
    root = Path(args.swap_ready).resolve()
    library = Library(root, say)
    cache = load_cache(cache_path)
    lib = library_settings(root)
    note = library_model(args, cache.meta, cache_path, lib)
    if note:
        say(f"eras: {note}")
    detector = lambda: load_for(args, cache.meta, cache_path,  # noqa: E731
                                with_recognition=False)
    what = "eras extend" if extend else "eras"
    if extend:
        rec = step.live_eras(root, source)
        if rec is None:
            raise ValueError(f"{source} has no eras in {root}: run `faceset eras build "
                             f"{root} {cache_path} {source}` first")
        params, notes = params_from(args, cache.meta, rec["parameters"], lib)
    else:
        params, notes = params_from(args, cache.meta, lib=lib)
    say(f"{what} {library.display(source)}: " + ", ".join(notes)
        + f"; anchors >= {params.min_anchor} faces, years +-{params.year_window}, eras under "
        f"{params.min_era_faces} faces to _thin/")

    def plan():
        return (step.plan_extend if extend else step.plan_eras)(
            root, cache_path, source, params, args.progress, cache=cache)

    def show(plan) -> None:
        say(plan.dates.line())
        for line in ([] if extend else step.probe_lines(plan.probe)) + plan.lines():
            say(line)

    def resume(finished: list[str]) -> str | None:
        rec = step.live_eras(root, source)
        if not extend and rec is not None and rec["run"] in finished:
            return (f"eras: finished the interrupted eras run {rec['run']} of "
                    f"{library.display(source)}; nothing more to do")
        return None

    library.operation(what, plan,
                      lambda p, detail: (step.apply_extend if extend else step.apply_eras)(
                          p, detector, args.progress, detail),
                      args.dry_run, show=show, resume=resume,
                      closing=lambda p: [] if extend else p.export_lines(),
                      done=lambda p: p.done_line(), dry_note=f"nothing changed in {root}")
    return 0
