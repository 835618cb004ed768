"""embed SRC CACHE: detect and embed every new photo under SRC into CACHE (resumable).

Through a GPU worker instead (docs/queue-format.md):
  embed SRC CACHE --stage-queue QUEUE   list + hash here, queue what CACHE still lacks
  work/embed_worker.py QUEUE OUT        (on the GPU side) analyse the queue into OUT
  embed CACHE --merge-results OUT       fold OUT into CACHE
"""
from __future__ import annotations

import os

from ..io.imageio import DEFAULT_MAX_PIXELS
from ..runtime.jobs import EXIT_INTERRUPTED
from ..steps.embed import DEFAULT_FLUSH_EVERY, embed_folder
from .common import (add_cache_model_options, add_progress_option, backend_loader,
                     default_backend, defaults, recorded_model, say)


def register(sub) -> None:
    p = sub.add_parser("embed", description=__doc__,
                       usage="%(prog)s [options] SRC CACHE | SRC CACHE --stage-queue QUEUE | "
                             "CACHE --merge-results OUT")
    p.add_argument("src", metavar="SRC", help="folder of photos (scanned recursively)")
    p.add_argument("cache", metavar="CACHE", nargs="?",
                   help="cache file (.npz); created if missing, else extended")
    add_cache_model_options(p, f"CACHE (a new cache: {default_backend().DEFAULT_MODEL})")
    p.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY,
                   help="write progress to the cache every N files")
    workers = defaults(embed_folder)["workers"]
    p.add_argument("--workers", type=int, default=workers,
                   help="threads reading and decoding ahead of inference")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger images are recorded as errors (decompression bombs)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--stage-queue", metavar="QUEUE",
                   help="do not embed here: hash SRC and write a queue of the files CACHE "
                        "lacks for work/embed_worker.py")
    g.add_argument("--merge-results", metavar="OUT",
                   help="fold a worker's results folder OUT into CACHE (give only CACHE)")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.merge_results:
        if args.cache is not None:
            raise ValueError("embed --merge-results takes only CACHE: "
                             "embed CACHE --merge-results OUT")
        from ..steps.embed_queue import merge_embed_results

        summary = merge_embed_results(args.src, args.merge_results)
        say(f"embed: {summary.line()} into {args.src}")
        return 0
    if args.cache is None:
        raise ValueError("embed needs SRC and CACHE (or CACHE --merge-results OUT)")
    if os.path.realpath(args.cache) == os.path.realpath(args.src):
        raise ValueError(f"{args.cache}: the cache cannot be the photo folder itself; pass a "
                         "cache file such as work/cache/photos.npz")
    from ..formats.cache import cache_exists, load_cache

    note = recorded_model(args, [(load_cache(args.cache).meta, args.cache)]
                          if cache_exists(args.cache) else [])
    if note:   # the pack that made the cache, never silently another one
        say(f"embed: {note}")
    if args.stage_queue:
        from ..steps.embed_queue import stage_embed_queue

        summary = stage_embed_queue(args.src, args.cache, args.stage_queue, args.model,
                                    args.model_root, args.det_size, args.max_pixels,
                                    progress=args.progress)
        say(f"embed: {summary.line()}; queue {args.stage_queue}")
        return 0
    summary = embed_folder(args.src, args.cache, backend_loader(args), args.model,
                           flush_every=args.flush_every, workers=args.workers,
                           max_pixels=args.max_pixels, progress=args.progress)
    say(f"embed: {summary.line()}")
    for line in summary.skipped:
        say(f"embed: {line}")
    return EXIT_INTERRUPTED if summary.interrupted else 0


def pipeline_step(args, layout):
    """embed as the first step of `run`: SRC into the cache (inputs: the SRC listing)."""
    from ..runtime.pipeline import MODEL_OPTIONS, Step, digest, listing_digest, option_values
    from ..sources.folder import FolderSource

    cache_path = str(layout.cache)

    def action() -> dict:
        s = embed_folder(str(layout.src), cache_path, backend_loader(args), args.model,
                         flush_every=args.flush_every, progress=args.progress)
        say(f"embed: {s.line()}")
        for line in s.skipped:
            say(f"embed: {line}")
        if not s.seen:   # nothing to sort: stop here rather than fail on a missing cache
            raise ValueError(f"{layout.src}: no photos found; nothing to sort")
        return {"faces": s.faces, "new": s.new, "interrupted": s.interrupted}

    def inputs() -> str:   # the SRC tree + model options
        return digest(listing_digest(FolderSource(str(layout.src)).list_ids()),
                      option_values(args, *MODEL_OPTIONS), cache_path)
    return Step("embed", inputs, layout.cache, action)
