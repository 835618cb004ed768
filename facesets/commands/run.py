"""run SRC OUT: the whole pipeline (embed, cluster, refine, dedup, enrich, export-swap).

Outputs OUT/raw (cluster), OUT/facesets (refine), OUT/swap_ready (export-swap); the cache is
work/cache/<SRC folder name>.npz unless --cache is given. Re-run after a crash, it resumes
at the first step that has not finished with the same inputs (OUT/run_state.json).
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

from ..core.thresholds import resolve_threshold
from ..formats.cache import load_cache
from ..formats.manifest import (CLUSTER_MANIFEST_FILE, MANIFEST_FILE, REFINE_MANIFEST_FILE,
                                duplicates_path)
from ..io.fsutil import output_lock
from ..runtime import pipeline
from ..runtime.jobs import EXIT_INTERRUPTED
from ..sources.folder import list_images
from ..steps.cluster import run_cluster
from ..steps.dedup import run_dedup
from ..steps.embed import DEFAULT_FLUSH_EVERY, embed_folder
from ..steps.enrich import detection_loader, run_enrich
from ..steps.export import run_export
from ..steps.refine import run_refine
from .common import (add_engine_option, add_link_option, add_model_options, add_progress_option,
                     backend_loader, say)
from .export_swap import add_export_options, detector_loader, export_params, summary_line
from .refine import add_refine_options, params_from_args


def register(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline from a photo folder to .fsz bundles",
                       description=__doc__)
    p.add_argument("src", help="folder of photos (scanned recursively)")
    p.add_argument("out", help="output folder: raw/, facesets/, swap_ready/, run_state.json")
    p.add_argument("--cache", default=None,
                   help="cache file (default work/cache/<SRC folder name>.npz)")
    add_model_options(p)
    p.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY,
                   help=f"embed: write progress every N files ({DEFAULT_FLUSH_EVERY})")
    g = p.add_argument_group("cluster / refine")
    g.add_argument("--threshold", type=float, default=None,
                   help="cluster distance (0.55 for buffalo_l)")
    add_refine_options(g)
    add_engine_option(p)
    add_link_option(p)
    add_export_options(p, outlier_flag="--swap-outlier-threshold")
    p.add_argument("--candidates", action="store_true",
                   help="export-swap: review folders of raw singletons (see export-swap)")
    add_progress_option(p)
    p.set_defaults(func=run)


def build_steps(args, layout: pipeline.RunLayout) -> list[pipeline.Step]:
    cache_path = str(layout.cache)
    refine_manifest = layout.facesets / REFINE_MANIFEST_FILE
    raw_manifest = layout.raw / CLUSTER_MANIFEST_FILE
    model = dict(model=args.model, model_root=args.model_root, det_size=args.det_size)

    def embed():
        s = embed_folder(str(layout.src), cache_path, backend_loader(args), args.model,
                         flush_every=args.flush_every, progress=args.progress)
        say(f"embed: {s.line()}")
        for line in s.skipped:
            say(f"embed: {line}")
        if not s.seen:   # nothing to sort: stop here rather than fail on a missing cache
            raise ValueError(f"{layout.src}: no photos found; nothing to sort")
        return {"faces": s.faces, "new": s.new, "interrupted": s.interrupted}

    def cluster():
        cache = load_cache(cache_path)
        t = resolve_threshold("cluster", cache.meta, args.threshold)
        m = run_cluster(cache, cache_path, layout.raw, t, args.engine, args.link)
        say(f"cluster: {m['summary']['persons']} persons, {m['summary']['singletons']} "
            f"singletons; {layout.raw}")
        return m["summary"]

    def refine():
        cache = load_cache(cache_path)
        m = run_refine(cache, cache_path, layout.facesets, params_from_args(args, cache.meta),
                       args.link)
        say(f"refine: {m['summary']['facesets']} facesets, {m['summary']['faces_kept']} "
            f"faces; {layout.facesets}")
        return {k: v for k, v in m["summary"].items() if k != "dropped"}

    def dedup():
        s = run_dedup(cache_path, progress=args.progress)
        say(f"dedup: {s['identical_groups']} identical groups, {s['near_face_groups']} "
            f"near-duplicate face groups; {s['report']}")
        return {k: v for k, v in s.items() if k != "report"}

    def enrich():
        load = detection_loader(args.model, args.model_root, args.providers, args.det_size)
        s = run_enrich(cache_path, load, progress=args.progress, model=args.model)
        say(f"enrich: {s.line()}")
        return {"enriched": s.enriched, "interrupted": s.interrupted}

    def export():
        cache = load_cache(cache_path)
        params = export_params(args, cache.meta, args.candidates)
        top = run_export(cache_path, refine_manifest, layout.swap_ready, params,
                         detector_loader(args, cache.meta), raw_manifest, args.progress)
        say(summary_line(top, layout.swap_ready))
        return {k: v for k, v in top["summary"].items() if k != "dropped"}

    def opts(*names) -> dict:
        return {n: getattr(args, n) for n in names}

    export_opts = opts("swap_outlier_threshold", "min_face_short", "out_size", "pad_ratio",
                       "top_n", "candidate_match_threshold", "candidate_min_score",
                       "candidates", "model", "model_root")

    def src_listing() -> str:   # the SRC tree + model options
        return pipeline._digest(pipeline.listing_digest(list_images(str(layout.src))), model,
                                cache_path)

    def export_inputs() -> str:
        return pipeline._digest(pipeline.cache_inputs(layout, True, export_opts)(),
                                pipeline.file_digest(refine_manifest),
                                pipeline.file_digest(raw_manifest))
    return [
        pipeline.Step("embed", src_listing, layout.cache, embed),
        pipeline.Step("cluster", pipeline.cache_inputs(
            layout, False, opts("threshold", "engine", "link")), raw_manifest, cluster),
        pipeline.Step("refine", pipeline.cache_inputs(layout, False, opts(
            "initial_threshold", "merge_threshold", "outlier_threshold", "min_short",
            "min_blur", "min_det_score", "min_faces", "engine", "link")), refine_manifest,
            refine),
        pipeline.Step("dedup", pipeline.cache_inputs(layout, False),
                      duplicates_path(cache_path), dedup),
        pipeline.Step("enrich", pipeline.cache_inputs(layout, False, model), layout.cache,
                      enrich),
        pipeline.Step("export-swap", export_inputs, layout.swap_ready / MANIFEST_FILE,
                      export),
    ]


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
    layout.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as locks:   # OUT and each folder a step replaces whole
        for folder in (layout.out, layout.raw, layout.facesets, layout.swap_ready):
            locks.enter_context(output_lock(folder))
        state = pipeline.RunState.load(layout.state)
        result = pipeline.run_steps(build_steps(args, layout), state, say)
    if result["interrupted"]:
        say(f"run: interrupted during {result['interrupted']}; re-run the same command to "
            "resume")
        return EXIT_INTERRUPTED
    say(f"run: ran {', '.join(result['ran']) or 'nothing'}; skipped "
        f"{', '.join(result['skipped']) or 'nothing'}; bundles in {layout.swap_ready} "
        f"(cache {os.fspath(cache)})")
    return 0
