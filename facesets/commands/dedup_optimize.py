"""library dedup (was dedup-optimize): take duplicate face PNGs out of a swap-ready folder:
byte-identical PNGs in any facesets (sha256) and near-duplicate faces within a faceset
(their embeddings in the export's cache within --max-distance). The best-scoring face stays;
the others move to faces/_dropped/, the bundles are rebuilt, the run is recorded (`library
history`, `library undo`)."""
from __future__ import annotations

from .common import add_progress_option, recorded_run, say, swap_ready_meta
from .options import add_flag, add_old_spelling


def register(sub) -> None:
    p = sub.add_parser("dedup-optimize", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    add_flag(p, "--max-distance", type=float, default=None,
             more=", within a faceset (default: the model's; buffalo_l 0.05, i.e. "
                  "similarity 0.95)")
    add_old_spelling(p, "--near-threshold", "--max-distance", " (as in `dedup`)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..core.settings import library_settings, library_threshold
    from ..steps.dedup_optimize import apply_dedup, plan_dedup

    root = Path(args.swap_ready).resolve()
    meta = swap_ready_meta(root)
    near, source = library_threshold("dedup_near", meta, args.max_distance,
                                     library_settings(root))
    say(f"library dedup: near duplicates within distance {near} ({source})")
    recorded_run(root, "library dedup", lambda: plan_dedup(root, near, args.progress),
                 apply_dedup, args.dry_run)
    return 0
