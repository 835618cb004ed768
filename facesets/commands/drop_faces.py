"""faceset drop (was drop-faces): take faces out of a faceset by hand: their PNGs move to
faces/_dropped/ (dropped[] reason "review"), the bundles are rebuilt. A recorded run (`library undo`
puts them back). The review page's drop calls the same function."""
from __future__ import annotations

from .common import after_run, say


def register(sub) -> None:
    p = sub.add_parser("drop-faces", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.add_argument("faceset", metavar="FACESET", help="faceset_NNN")
    p.add_argument("files", metavar="FACE", nargs="+", help="faces/NNN.png (as in its manifest)")
    p.set_defaults(func=after_run(run, lambda a: a.swap_ready))


def run(args) -> int:
    from ..core.library import display_name
    from ..steps.curate import drop_faces

    entry = drop_faces(args.swap_ready, args.faceset, args.files, log=lambda m: say(f"  {m}"))
    say(f"faceset drop: {len(args.files)} faces of {display_name(args.swap_ready, args.faceset)} "
        f"moved to faces/_dropped/ (run {entry['id']})")
    return 0
