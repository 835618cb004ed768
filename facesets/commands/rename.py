"""faceset rename: write a person's name into a faceset's NAME.txt (a recorded run:
`library undo` gives the previous name back). The review page's rename calls the same function."""
from __future__ import annotations

from .common import after_run, say


def register(sub) -> None:
    p = sub.add_parser("rename", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.add_argument("faceset", metavar="FACESET", help="faceset_NNN")
    p.add_argument("name", metavar="NAME", help="the person's name")
    p.set_defaults(func=after_run(run, lambda a: a.swap_ready))


def run(args) -> int:
    from ..core.library import display_name
    from ..steps.curate import rename

    was = display_name(args.swap_ready, args.faceset)   # its label before the rename
    entry = rename(args.swap_ready, args.faceset, args.name, log=lambda m: say(f"  {m}"))
    say(f"rename: {was} is now {args.name!r} (run {entry['id']})")
    return 0
