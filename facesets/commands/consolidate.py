"""library consolidate: merge facesets of a swap-ready folder that are one person.

Complete linkage over faceset centroids: facesets whose every pair is within the group
threshold form a group; a group whose farthest pair is within the merge threshold (--confident-threshold) is
merged into its largest faceset (the others move to _merged/, their faces join it, re-ranked, its
bundles rebuilt). The run is recorded: `library history` lists it, `library undo` reverses
it.
"""
from __future__ import annotations

import argparse

from .common import recorded_run, say, swap_ready_meta
from .options import add_consolidate_thresholds


def register(sub) -> None:
    p = sub.add_parser("consolidate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    add_consolidate_thresholds(p)
    p.add_argument("--dry-run", action="store_true", help="print the groups, change nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..core.settings import library_settings, library_threshold
    from ..steps.consolidate import apply_consolidate, plan_consolidate

    root = Path(args.swap_ready).resolve()
    meta, lib = swap_ready_meta(root), library_settings(root)
    group, gsrc = library_threshold("consolidate_group", meta, args.group_threshold, lib)
    merge, msrc = library_threshold("consolidate_merge", meta, args.confident_threshold, lib)
    if merge > group:
        raise ValueError(f"--confident-threshold {merge} is looser than --group-threshold {group}")
    say(f"consolidate: group within distance {group} ({gsrc}), merge within {merge} ({msrc})")
    recorded_run(root, "consolidate", lambda: plan_consolidate(root, group, merge),
                 apply_consolidate, args.dry_run)
    return 0
