"""dedup CACHE: byte-identical copies and visual near-duplicates -> CACHE.duplicates.json."""
from __future__ import annotations

from ..steps.dedup import DEFAULT_MAX_DISTANCE, DEFAULT_SIZE_TOLERANCE, run_dedup
from .common import add_progress_option, say


def register(sub) -> None:
    p = sub.add_parser("dedup", help="find byte-identical and visually near-duplicate photos",
                       description=__doc__)
    p.add_argument("cache")
    p.add_argument("--max-distance", type=float, default=DEFAULT_MAX_DISTANCE,
                   help=f"cosine distance of two faces of one photo re-encoded or resized "
                        f"({DEFAULT_MAX_DISTANCE})")
    p.add_argument("--size-tolerance", type=float, default=DEFAULT_SIZE_TOLERANCE,
                   help="how far the two faces' share of their image (box width and height "
                        f"over image width and height) may differ, relative ({DEFAULT_SIZE_TOLERANCE})")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    s = run_dedup(args.cache, args.max_distance, args.size_tolerance, args.progress)
    say(f"dedup: {s['photos']} photos, {s['faces']} faces: {s['identical_groups']} byte-identical "
        f"groups ({s['identical_extra_copies']} extra copies), {s['near_photo_groups']} "
        f"near-duplicate groups ({s['near_photos']} photos, {s['near_face_groups']} face "
        f"groups); {s['report']}")
    return 0
