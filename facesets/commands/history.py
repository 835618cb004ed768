"""history: the recorded runs of a swap-ready folder (consolidate, audit-multiface apply,
undo...), oldest first, with what each changed and whether it was undone."""
from __future__ import annotations

import json

from .common import say


def register(sub) -> None:
    p = sub.add_parser("history", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..core.runs import load_top, pending

    root = Path(args.swap_ready).resolve()
    entries = load_top(root).get("runs", [])
    for e in entries:
        state = f"undone by {e['undone_by']}" if e.get("undone_by") else "in effect"
        if e.get("undoes"):
            state = f"undoes {e['undoes']}"
        say(f"{e['id']}  {e.get('when', '?')}  {e['step']:<16} {e.get('moves', 0)} moves, "
            f"{e.get('changed', 0)} files changed; {state}; "
            f"{json.dumps(e.get('summary', {}), sort_keys=True)}")
    left = pending(root)
    for run_id in left:
        say(f"{run_id}  interrupted: the next command on this folder finishes it")
    say(f"history: {len(entries)} runs" + (f", {len(left)} interrupted" if left else ""))
    return 0
