"""faceset move (was move-face): move faces from one faceset into another (numbered past its
highest PNG, re-ranked by score there); both bundles are rebuilt. A recorded run (`library undo`
reverses it). The review page's move calls the same function."""
from __future__ import annotations

from .common import after_run, say
from .options import add_flag, add_old_spelling


def register(sub) -> None:
    p = sub.add_parser("move-face", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.add_argument("faceset", metavar="FROM", help="faceset_NNN the faces are in")
    p.add_argument("files", metavar="FACE", nargs="+", help="faces/NNN.png (as in its manifest)")
    to = p.add_mutually_exclusive_group(required=True)   # so that the old spelling counts
    add_flag(to, "--to", metavar="FACESET")
    add_old_spelling(to, "--into", "--to", " (--into was the library folder of import and "
                     "discover)")
    p.set_defaults(func=after_run(run, lambda a: a.swap_ready))


def run(args) -> int:
    from ..core.library import display_name
    from ..steps.curate import move_face

    entry = move_face(args.swap_ready, args.faceset, args.files, args.to,
                      log=lambda m: say(f"  {m}"))
    say(f"faceset move: {len(args.files)} faces of {display_name(args.swap_ready, args.faceset)} "
        f"moved into {display_name(args.swap_ready, args.to)} "
        f"(run {entry['id']})")
    return 0
