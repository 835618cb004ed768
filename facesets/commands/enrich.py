"""enrich CACHE: landmarks (2d106, 3d68) and head pose into the cache, resumably.

Packs without landmark models (e.g. buffalo_sc, the offline test pack) get a pose estimated
from the 5 cached keypoints (pose_method kps5) instead of the 3d68 model's (3d68).
"""
from __future__ import annotations

from ..formats.cache import load_cache
from ..runtime.jobs import EXIT_INTERRUPTED
from ..steps.embed import DEFAULT_FLUSH_EVERY
from ..steps.enrich import detection_loader, run_enrich
from .common import CACHE_HELP, add_cache_model_options, add_progress_option, load_for, say


def register(sub) -> None:
    p = sub.add_parser("enrich", description=__doc__)
    p.add_argument("cache", help=CACHE_HELP)
    add_cache_model_options(p)
    p.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY,
                   help="write progress to the cache every N photos")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.flush_every < 1:
        raise ValueError(f"--flush-every {args.flush_every}: must be at least 1")
    def load():   # called only when some face needs work; the cache's own pack by default
        return load_for(args, load_cache(args.cache).meta, args.cache, with_recognition=False)
    s = run_enrich(args.cache, load, progress=args.progress, flush_every=args.flush_every,
                   model=args.model)
    say(f"enrich: {s.line()}")
    return EXIT_INTERRUPTED if s.interrupted else 0


def pipeline_step(args, layout):
    """enrich as a step of `run`: landmarks and pose into the cache."""
    from ..runtime.pipeline import MODEL_OPTIONS, Step, cache_inputs, option_values

    def action() -> dict:
        load = detection_loader(args.model, args.model_root, args.providers, args.det_size)
        s = run_enrich(str(layout.cache), load, progress=args.progress, model=args.model)
        say(f"enrich: {s.line()}")
        return {"enriched": s.enriched, "interrupted": s.interrupted}

    return Step("enrich", cache_inputs(layout, False, option_values(args, *MODEL_OPTIONS)),
                layout.cache, action)
