"""run SRC OUT: the whole pipeline (embed, cluster, refine, dedup, enrich, export-swap).

Outputs OUT/raw (cluster), OUT/facesets (refine), OUT/swap_ready (export-swap); the cache is
work/cache/<SRC folder name>.npz unless --cache is given. Re-run after a crash, it resumes
at the first step that has not finished with the same inputs (OUT/run_state.json).

On an OUT that holds a library already (OUT/swap_ready), run is incremental: embed, extend
(SRC's new faces join raw/'s persons and facesets/'s facesets, their numbering kept), dedup,
enrich, grow (the library's new faces join its facesets, whatever made them, or become new
facesets numbered past the highest: one recorded run, undoable; see `library grow`). No faceset is
renumbered or renamed. --rebuild re-clusters and re-exports everything instead.
"""
from __future__ import annotations

import importlib
import os
import textwrap
from contextlib import ExitStack
from pathlib import Path

from ..core.thresholds import (FLAGS, MODEL_THRESHOLDS, ThresholdError, missing_message,
                               missing_thresholds)
from ..formats.cache import cache_exists, load_cache, update_meta
from ..formats.manifest import SWAP_FACESET_MANIFEST, SWAP_MANIFEST, ManifestError, load_manifest
from ..formats.report import REPORT_FILE
from ..formats.swapset import NAME_FILE
from ..io.fsutil import output_lock
from ..runtime import pipeline
from ..runtime.jobs import DEFAULT_FLUSH_EVERY, EXIT_INTERRUPTED
from ..runtime.program import program_name
from .common import (add_cache_model_options, add_engine_option, add_link_option,
                     add_progress_option, recorded_model, say, warn)
from .common import add_merge_ratio_option
from .options import DEFAULT_MODEL, add_export_options, add_refine_options, model_threshold


def register(sub) -> None:
    p = sub.add_parser("run", description=__doc__, epilog=thresholds_epilog())
    p.add_argument("src", help="folder of photos (scanned recursively)")
    p.add_argument("out", help="output folder: raw/, facesets/, swap_ready/, run_state.json")
    p.add_argument("--cache", default=None,
                   help="cache file (default work/cache/<SRC folder name>.npz)")
    add_cache_model_options(p, "the cache (or recorded by OUT's library)")
    p.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY,
                   help="embed: write progress every N files")
    g = p.add_argument_group("cluster / refine")
    g.add_argument("--threshold", type=float, default=None,
                   help=f"cluster distance (model default; {model_threshold('cluster')} for "
                        f"{DEFAULT_MODEL})")
    add_merge_ratio_option(g)
    add_refine_options(g)
    add_engine_option(p)
    add_link_option(p)
    add_export_options(p)
    p.add_argument("--candidates", action="store_true",
                   help="export-swap: review folders of raw singletons (see export-swap)")
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="a model without built-in thresholds: do not estimate the missing "
                        "ones from the cache (see below); list them and stop instead")
    p.add_argument("--rebuild", action="store_true",
                   help="on an OUT holding a library: re-cluster the whole cache and re-export "
                        "OUT/swap_ready (refused when identity operations made facesets there) "
                        "instead of growing it")
    add_progress_option(p)
    p.set_defaults(func=run)


def build_steps(args, layout: pipeline.RunLayout, grow: bool = False) -> list[pipeline.Step]:
    """Each step of pipeline.STEPS (``grow``: of pipeline.GROW_STEPS), as its command module
    declares it (pipeline_step), and the estimate after embed when thresholds must be
    estimated (``args.estimate_needed``)."""
    own = {"extend": extend_step, "grow": grow_step}
    steps = [own[name](args, layout) if name in own else
             importlib.import_module(f"{__package__}.{name.replace('-', '_')}")
             .pipeline_step(args, layout)
             for name in (pipeline.GROW_STEPS if grow else pipeline.STEPS)]
    if getattr(args, "estimate_needed", None):
        steps.insert(1, pipeline.Step(
            "estimate", pipeline.cache_inputs(layout, False, args.estimate_needed),
            layout.cache, lambda: ensure_estimate(args, layout.cache, args.estimate_needed)))
    return steps


# the thresholds each step of `run` resolves (threshold name -> the argparse dest)
RUN_THRESHOLDS = {"cluster": "threshold", "initial": "initial_threshold",
                  "merge": "merge_threshold", "outlier": "outlier_threshold",
                  "swap_outlier": "swap_outlier_threshold"}


def thresholds_epilog() -> str:
    """What `run --help` says about models without built-in thresholds."""
    flags = ", ".join(FLAGS[n] for n in RUN_THRESHOLDS)
    packs = ", ".join(sorted(MODEL_THRESHOLDS))
    return textwrap.fill(
        f"Model packs with built-in thresholds: {packs}. Any other pack (--model NAME or a "
        f"folder) needs {flags} (and {FLAGS['candidate_match']} with --candidates), unless the "
        "cache holds calibrated ones (`calibrate CACHE TRUTH_ROOT --save`); run checks this "
        "before any work and lists every missing one; without them it ESTIMATES the missing "
        "ones from the cache's faces (as `calibrate --estimate CACHE`, after embed when the "
        "cache is new), says so loudly, and stops with the reason when the estimate cannot be "
        "trusted (--no-estimate: stop and list them instead). Old spelling: export-swap's "
        "--outlier-threshold is --swap-outlier-threshold, as here (--outlier-threshold is "
        "refine's gate).", width=79, break_on_hyphens=False)


def check_thresholds(args, cache: Path) -> None:
    """Before any work: every threshold the whole run will resolve is known (flag, the
    cache's calibrated values, or the model's table), else one error lists all missing."""
    names = dict(RUN_THRESHOLDS, **({"candidate_match": "candidate_match_threshold"}
                                     if args.candidates else {}))
    given = {n: getattr(args, dest) for n, dest in names.items()}
    model = Path(args.model).name if Path(args.model).expanduser().is_dir() else args.model
    meta = {"model": model}
    if not missing_thresholds(names, meta, given):
        return
    embed = ""
    if cache_exists(cache):   # its calibrated thresholds (and its model) count
        meta = load_cache(cache).meta
    else:
        root = f" --model-root {args.model_root}" if args.model_root else ""
        embed = f"{program_name()} embed {args.src} {os.fspath(cache)} --model {args.model}{root}"
    # a recorded estimate counts only with --no-estimate; else ensure_estimate reuses it, or
    # makes it again when the faces changed
    missing = missing_thresholds(names, meta if not args.estimate else
                                 {k: v for k, v in meta.items() if k != "estimate"}, given)
    if missing and not args.estimate:
        raise ThresholdError(missing_message(missing, meta.get("model") or model,
                                             os.fspath(cache), "run", embed))
    if missing:   # estimated: now when the cache exists (refused before any work), else
        args.estimate_needed = sorted(missing)   # after embed (the "estimate" step)
        say(f"run: model '{meta.get('model') or model}' has no built-in thresholds and "
            f"{os.fspath(cache)} no calibrated ones: {', '.join(FLAGS[n] for n in missing)} "
            "will be ESTIMATED from the cache's own faces"
            + (" after embed" if embed else "") + f"; for measured ones run `{program_name()} "
            f"calibrate {os.fspath(cache)} TRUTH_ROOT --save`")
        if not embed:
            try:
                ensure_estimate(args, cache, args.estimate_needed)
            except ThresholdError:
                if not unembedded(args.src, cache):
                    raise   # embed has nothing to add: refused before any work
                say("run: the cache's faces do not allow an estimate yet; it is made again "
                    "after embed adds SRC's new photos")


def use_library_settings(args, layout: pipeline.RunLayout) -> None:
    """A re-run on an existing OUT passes no setting again: the model the cache (or OUT's
    library) recorded, and the gates and chosen thresholds of OUT/swap_ready's library
    (core/settings.py); a flag overrides them and is recorded by the export."""
    from ..core.settings import library_settings, resolve_settings

    lib = library_settings(layout.swap_ready, on_error=warn)
    records = [(load_cache(layout.cache).meta, os.fspath(layout.cache))] \
        if cache_exists(layout.cache) else []
    if lib.model:
        records.append(({"model": lib.model, "pack_dir": lib.pack_dir}, str(lib.path)))
    note = recorded_model(args, records)
    names = dict(RUN_THRESHOLDS, candidate_match="candidate_match_threshold")
    args.settings_resolved = resolve_settings(args, lib, names)
    for line in ([note] if note else []) + args.settings_resolved.notes:
        say(f"run: {line}")


def unembedded(src, cache: Path) -> int:
    """How many photos under SRC embed would still read (new or changed since the cache)."""
    from ..sources.folder import FolderSource

    known = load_cache(cache).path_index()
    n = 0
    for p in FolderSource(str(src)).list_ids():
        rec = known.get(p)
        try:
            st = os.stat(p)
        except OSError:
            continue
        n += rec is None or (rec[0], rec[1]) != (st.st_size, st.st_mtime_ns)
    return n


def ensure_estimate(args, cache: Path, names: list[str]) -> dict:
    """The cache's recorded estimate, made again (and recorded) when it is missing, lacks
    one of ``names`` or was made over another number of faces; EstimateError (one message
    asking for calibrate) when it cannot be trusted."""
    from ..core.selection import select_faces
    from ..steps.estimate import estimate

    c = load_cache(cache)
    have = c.meta.get("estimate") or {}
    n = len(select_faces(c))
    if have.get("stats", {}).get("selected") == n and \
            all(k in have.get("thresholds", {}) for k in names):
        say(f"run: thresholds ESTIMATED earlier for these {n} faces: "
            + ", ".join(f"{k} {have['thresholds'][k]}" for k in names))
        return {"estimated": have["thresholds"], "again": False}
    est = estimate(c, os.fspath(cache), args.engine)
    est.stats["selected"] = n
    update_meta(cache, estimate=est.record())
    say("run: thresholds ESTIMATED from the cache (no calibrated or built-in ones; "
        f"`calibrate {os.fspath(cache)} TRUTH_ROOT --save` measures them):")
    for line in est.lines:
        say(f"run:   {line}")
    say("run: ESTIMATED, used for "
        + ", ".join(f"{FLAGS[k]} {est.thresholds[k]}" for k in names))
    return {"estimated": est.thresholds, "again": True}


def library_size(layout: pipeline.RunLayout) -> int | None:
    """How many facesets OUT/swap_ready's library lists; None when OUT holds none (a
    first run). A damaged top-level manifest is one error naming it."""
    if not layout.swap_manifest.is_file():
        return None
    return len(load_manifest(layout.swap_manifest, SWAP_MANIFEST)["facesets"])


def extend_step(args, layout: pipeline.RunLayout) -> pipeline.Step:
    """extend as a step of an incremental `run`: the cache's new faces join OUT/raw's
    persons and OUT/facesets' facesets (numbering kept); nothing when OUT has no raw/ (a
    library fed otherwise, e.g. only from Immich)."""
    def action() -> dict:
        from ..steps.extend import run_extend

        if not layout.raw_manifest.is_file():
            say(f"run: extend: {layout.raw_manifest} missing (a library made otherwise): "
                "skipped")
            return {"skipped": "no raw output"}
        refine_out = layout.facesets if layout.refine_manifest.is_file() else None
        res = run_extend(load_cache(layout.cache), os.fspath(layout.cache), layout.raw,
                         refine_out, args.threshold, args.engine)
        raw, ref = res["raw"] or {}, res["refine"] or {}
        say(f"run: extend: {res['new_faces']} faces new to {layout.raw}: "
            f"{sum((raw.get('joined') or {}).values())} joined persons, "
            f"{len(raw.get('new_persons') or [])} new persons; {layout.facesets}: "
            f"{ref.get('faces_added', 0)} faces added, "
            f"{len(ref.get('new_facesets') or [])} new facesets (numbering kept)")
        return {"new_faces": res["new_faces"]}

    options = pipeline.option_values(args, "threshold", "engine")
    return pipeline.Step("extend", pipeline.cache_inputs(layout, False, options), layout.out,
                         action)


def grow_step(args, layout: pipeline.RunLayout) -> pipeline.Step:
    """grow as a step of an incremental `run`: OUT/swap_ready's new faces join its facesets
    or become new ones (steps/grow.py), one recorded run; OUT's lock is held already."""
    def action() -> dict:
        from ..core.library import undo_line
        from ..core.settings import flag_choices, library_settings
        from ..steps.grow import grow_library
        from .common import refresh_report
        from .export_swap import detector_loader
        from .grow import grow_params

        cache = load_cache(layout.cache)
        lib = library_settings(layout.swap_ready)
        params, lines, _ = grow_params(args, cache.meta, os.fspath(layout.cache), lib)
        say(f"run: grow: {lines[0]}")
        # what run's own flags chose (args holds the library's values by now as well)
        chosen = flag_choices(args, args.settings_resolved, RUN_THRESHOLDS)
        plan = grow_library(layout.swap_ready, os.fspath(layout.cache), params,
                            detector_loader(args, cache.meta, os.fspath(layout.cache)),
                            progress=args.progress, log=lambda m: say(f"  {m}"), lock=False,
                            cache=cache, settings=chosen)
        for line in plan.lines():
            say(f"  {line}")
        entry = plan.result.entry if plan.result else None
        say(f"run: grow: {plan.line()}; {undo_line(layout.swap_ready, entry)}")
        refresh_report(layout.swap_ready)
        return {"new_faces": plan.new, "joined": plan.joined(), "gated": plan.gated(),
                "new_facesets": len(plan.result.names) if plan.result else 0,
                "run": entry["id"] if entry else None}

    options = pipeline.option_values(
        args, "threshold", "initial_threshold", "merge_threshold", "outlier_threshold",
        "swap_outlier_threshold", "min_short", "min_blur", "min_det_score", "min_faces",
        "min_face_short", "out_size", "pad_ratio", "top_n", *pipeline.MODEL_OPTIONS)
    return pipeline.Step("grow", pipeline.cache_inputs(layout, True, options),
                         layout.swap_manifest, action)


def run(args) -> int:
    src = Path(args.src)
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: not a folder of photos; pass the folder to sort")
    if os.path.realpath(args.out) == os.path.realpath(src):
        raise ValueError(f"{args.out}: OUT cannot be SRC itself; pass a new folder such as "
                         f"{os.path.join(args.src, 'sorted')} (face-sets' own folders inside "
                         "SRC are never scanned as photos)")
    cache = Path(args.cache) if args.cache else pipeline.default_cache(src)
    layout = pipeline.RunLayout(src=src, out=Path(args.out), cache=cache)
    use_library_settings(args, layout)
    check_thresholds(args, cache)
    layout.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as locks:   # OUT and each folder a step replaces whole
        for folder in (layout.out, layout.raw, layout.facesets, layout.swap_ready):
            locks.enter_context(output_lock(folder))
        size = library_size(layout)
        state = pipeline.RunState.load(layout.state)
        steps = build_steps(args, layout)
        # a first run a kill interrupted after export-swap made the library, before its
        # state recorded it, is finished as a first run (so it ends as an uninterrupted one)
        first_run = "cluster" in state.steps and "export-swap" not in state.steps
        if size is not None and not args.rebuild and not first_run:
            if all(state.done(s.name, s.inputs()) and s.output.exists() for s in steps):
                say(f"run: {layout.out} holds a library of {size} facesets, made from these "
                    "photos with these settings: nothing to grow")
            else:
                steps = build_steps(args, layout, grow=True)
                say(f"run: {layout.out} holds a library of {size} facesets: growing it (new "
                    "faces join their facesets or become new ones; nothing renumbered; "
                    "--rebuild re-clusters and re-exports instead)")
        elif size is not None and not first_run:
            from ..steps.export import refuse_identity_ops

            refuse_identity_ops(layout.swap_ready)   # before raw/ and facesets/ are rebuilt
            say(f"run: {layout.out} holds a library of {size} facesets: --rebuild, "
                "re-clustering and re-exporting it")
        result = pipeline.run_steps(steps, state, say)
    if result["interrupted"]:
        say(f"run: interrupted during {result['interrupted']}; re-run the same command to "
            "resume")
        return EXIT_INTERRUPTED
    say(f"run: ran {', '.join(result['ran']) or 'nothing'}; skipped "
        f"{', '.join(result['skipped']) or 'nothing'}; bundles in {layout.swap_ready} "
        f"(cache {os.fspath(cache)})")
    for line in result_table(layout):
        say(line)
    return 0


def result_table(layout: pipeline.RunLayout) -> list[str]:
    """The end of `run`: per faceset the faces kept, dropped by reason and its bundles, then
    what to do next."""
    try:
        top = load_manifest(layout.swap_manifest, SWAP_MANIFEST)
    except (ManifestError, ValueError, OSError):
        return []
    if not top["facesets"]:
        return ["run: no faceset made it to export: see refine's line above (what it dropped, "
                "and which gate value would keep the faces)"]
    rows = []
    for entry in top["facesets"]:
        try:
            m = load_manifest(layout.swap_ready / entry["manifest"], SWAP_FACESET_MANIFEST)
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(m["summary"]["dropped"].items()))
        except (ManifestError, ValueError, OSError, KeyError, TypeError):
            dropped = "?"
        rows.append((entry["name"], str(entry["faces"]), dropped or "none",
                     f"{entry['top_bundle']}, {entry['all_bundle']}"))
    head = ("faceset", "kept", "dropped by export", "bundles (in swap_ready/)")
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = ["run: facesets"] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, width))
                                 + "  " + r[3] for r in [head, *rows]]
    first = top["facesets"][0]
    prog = program_name()
    return lines + [
        "next:",
        f"  1. look at them: open {layout.swap_ready / REPORT_FILE} in a browser (one card "
        "per faceset)",
        f"  2. fix them: {prog} library review {layout.swap_ready}   (rename, merge, split, "
        "drop faces in the browser; undoable)",
        f"  3. {prog} verify-fsz {layout.swap_ready}   (one face per PNG, as "
        "roop-unleashed reads them)",
        f"  4. write each person's name in {layout.swap_ready / first['name'] / NAME_FILE} "
        "(or with review's rename); kept across re-runs",
        f"  5. in roop-unleashed, load {layout.swap_ready / first['top_bundle']} (or _all) as "
        "the source face set"]
