"""faceset split: one faceset that holds more than one person, re-clustered tightly and written as
new facesets (undoable; the opposite of library consolidate).

The faces' embeddings are read from the cache the faceset manifest names (--cache for
another one); they are clustered with average linkage at --split-threshold (faces of one
photo never together). Every cluster of at least --min-part faces becomes a new faceset_NNN,
numbered past the highest, made of copies of its PNGs (no re-crop), with its own centroid,
bundles and NAME.txt. The original folder moves whole to _split/faceset_NNN (faces of no
part stay only there). --dry-run prints the parts and their face files.
"""
from __future__ import annotations

from ..steps.split import plan_split
from .common import defaults, recorded_run, say, swap_ready_meta
from .options import add_flag, add_old_spelling


def register(sub) -> None:
    p = sub.add_parser("split", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="swap-ready library")
    p.add_argument("faceset", metavar="FACESET", help="the faceset to split (faceset_NNN)")
    add_flag(p, "--split-threshold", type=float, default=None,
             more=" (default: the model's; buffalo_l 0.45)")
    add_old_spelling(p, "--threshold", "--split-threshold")
    add_flag(p, "--min-part", type=int, default=defaults(plan_split)["min_faces"])
    add_old_spelling(p, "--min-faces", "--min-part", " (--min-faces is refine's photos per "
                     "faceset)")
    p.add_argument("--cache", default=None,
                   help="cache holding the faces' embeddings (default: the one the faceset "
                        "manifest names)")
    p.add_argument("--dry-run", action="store_true", help="print the parts, change nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..core.library import display_name
    from ..core.settings import library_settings, library_threshold
    from ..steps.split import apply_split

    root = Path(args.swap_ready).resolve()
    meta = swap_ready_meta(root)
    threshold, source = library_threshold("split", meta, args.split_threshold,
                                          library_settings(root))
    say(f"split: {display_name(root, args.faceset)} re-clustered at distance {threshold} "
        f"({source}), parts of at least {args.min_part} faces")
    recorded_run(root, "split", lambda: plan_split(root, args.faceset, threshold,
                                                   args.min_part, cache_path=args.cache),
                 apply_split, args.dry_run)
    return 0
