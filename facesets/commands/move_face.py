"""move-face: move faces from one faceset into another (numbered past its highest PNG,
re-ranked by score there); both bundles are rebuilt. A recorded run (`undo` reverses it).
The review page's move calls the same function."""
from __future__ import annotations

from .common import after_run, say


def register(sub) -> None:
    p = sub.add_parser("move-face", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.add_argument("faceset", metavar="FROM", help="faceset_NNN the faces are in")
    p.add_argument("files", metavar="FACE", nargs="+", help="faces/NNN.png (as in its manifest)")
    p.add_argument("--into", required=True, metavar="FACESET", help="faceset_NNN to move into")
    p.set_defaults(func=after_run(run, lambda a: a.swap_ready))


def run(args) -> int:
    from ..steps.curate import move_face

    entry = move_face(args.swap_ready, args.faceset, args.files, args.into,
                      log=lambda m: say(f"  {m}"))
    say(f"move-face: {len(args.files)} faces of {args.faceset} moved into {args.into} "
        f"(run {entry['id']})")
    return 0
