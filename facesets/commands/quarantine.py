"""faceset quarantine: set a whole faceset aside: its folder moves to _quarantine/ and leaves the
top-level manifest's listing (quarantined[] says where it went). A recorded run (`library undo`
brings it back)."""
from __future__ import annotations

from .common import after_run, say


def register(sub) -> None:
    p = sub.add_parser("quarantine", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.add_argument("faceset", metavar="FACESET", help="faceset_NNN")
    p.set_defaults(func=after_run(run, lambda a: a.swap_ready))


def run(args) -> int:
    from ..core.library import display_name
    from ..steps.curate import quarantine

    shown = display_name(args.swap_ready, args.faceset)   # NAME.txt moves with the folder
    entry = quarantine(args.swap_ready, args.faceset, log=lambda m: say(f"  {m}"))
    say(f"quarantine: {shown} moved to _quarantine/ (run {entry['id']})")
    return 0
