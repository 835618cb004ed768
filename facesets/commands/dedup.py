"""dedup CACHE: byte-identical copies and visual near-duplicates -> CACHE.duplicates.json."""
from __future__ import annotations

from ..runtime.pipeline import RunLayout, Step, cache_inputs
from ..steps.dedup import duplicates_path, run_dedup
from .common import CACHE_HELP, add_progress_option, defaults, say
from .options import add_flag

DEDUP = defaults(run_dedup)


def register(sub) -> None:
    p = sub.add_parser("dedup", description=__doc__)
    p.add_argument("cache", help=CACHE_HELP)
    add_flag(p, "--max-distance", type=float, default=DEDUP["max_distance"],
             more=" (two faces of one photo re-encoded or resized)")
    p.add_argument("--size-tolerance", type=float, default=DEDUP["size_tolerance"],
                   help="how far the two faces' share of their image (box width and height "
                        "over image width and height) may differ, relative")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    s = run_dedup(args.cache, args.max_distance, args.size_tolerance, args.progress)
    say(f"dedup: {s['photos']} photos, {s['faces']} faces: {s['identical_groups']} byte-identical "
        f"groups ({s['identical_extra_copies']} extra copies), {s['near_photo_groups']} "
        f"near-duplicate groups ({s['near_photos']} photos, {s['near_face_groups']} face "
        f"groups); {s['report']}")
    return 0


def pipeline_step(args, layout: RunLayout) -> Step:
    """dedup as a step of `run`: the duplicates report beside the cache."""
    def action() -> dict:
        s = run_dedup(str(layout.cache), progress=args.progress)
        say(f"dedup: {s['identical_groups']} identical groups, {s['near_face_groups']} "
            f"near-duplicate face groups; {s['report']}")
        return {k: v for k, v in s.items() if k != "report"}

    return Step("dedup", cache_inputs(layout, False), duplicates_path(str(layout.cache)),
                action)
