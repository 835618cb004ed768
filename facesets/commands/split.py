"""split: one faceset that holds more than one person, re-clustered tightly and written as
new facesets (undoable; the opposite of consolidate).

The faces' embeddings are read from the cache the faceset manifest names (--cache for
another one); they are clustered with average linkage at --threshold (faces of one photo
never together). Every cluster of at least --min-faces faces becomes a new faceset_NNN,
numbered past the highest, made of copies of its PNGs (no re-crop), with its own centroid,
bundles and NAME.txt. The original folder moves whole to _split/faceset_NNN (faces of no
part stay only there). --dry-run prints the parts and their face files.
"""
from __future__ import annotations

from ..steps.split import plan_split
from .common import defaults, recorded_run, say, swap_ready_meta


def register(sub) -> None:
    p = sub.add_parser("split", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="swap-ready library")
    p.add_argument("faceset", metavar="FACESET", help="the faceset to split (faceset_NNN)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine distance of the re-clustering (default: the model's; "
                        "buffalo_l 0.45)")
    p.add_argument("--min-faces", type=int, default=defaults(plan_split)["min_faces"],
                   help="smallest part that becomes a faceset")
    p.add_argument("--cache", default=None,
                   help="cache holding the faces' embeddings (default: the one the faceset "
                        "manifest names)")
    p.add_argument("--dry-run", action="store_true", help="print the parts, change nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..core.settings import library_settings, library_threshold
    from ..steps.split import apply_split

    root = Path(args.swap_ready).resolve()
    meta = swap_ready_meta(root)
    threshold, source = library_threshold("split", meta, args.threshold,
                                          library_settings(root))
    say(f"split: {args.faceset} re-clustered at distance {threshold} ({source}), parts of at "
        f"least {args.min_faces} faces")
    recorded_run(root, "split", lambda: plan_split(root, args.faceset, threshold,
                                                   args.min_faces, cache_path=args.cache),
                 apply_split, args.dry_run)
    return 0
