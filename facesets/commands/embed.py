"""embed SRC CACHE: detect and embed every new photo under SRC into CACHE (resumable)."""
from __future__ import annotations

from ..embed import DEFAULT_FLUSH_EVERY, embed_folder
from ..imageio import DEFAULT_MAX_PIXELS
from .common import add_model_options, add_progress_option, backend_loader, say

EXIT_INTERRUPTED = 130


def register(sub) -> None:
    p = sub.add_parser("embed", help="detect and embed faces of a photo folder into a cache",
                       description=__doc__)
    p.add_argument("src", help="folder of photos (scanned recursively)")
    p.add_argument("cache", help="cache file (.npz); created if missing, else extended")
    add_model_options(p)
    p.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY,
                   help=f"write progress to the cache every N files ({DEFAULT_FLUSH_EVERY})")
    p.add_argument("--workers", type=int, default=2,
                   help="threads reading and decoding ahead of inference (2)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger images are recorded as errors (decompression bombs)")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    summary = embed_folder(args.src, args.cache, backend_loader(args), args.model,
                           flush_every=args.flush_every, workers=args.workers,
                           max_pixels=args.max_pixels, progress=args.progress)
    say(f"embed: {summary.line()}")
    return EXIT_INTERRUPTED if summary.interrupted else 0
