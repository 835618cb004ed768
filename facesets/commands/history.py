"""library history: the recorded runs of a swap-ready folder (consolidate, audit-multiface apply,
undo...), oldest first, with what each changed and whether it was undone.

--keep N prunes: every run but the newest N loses its kept copies (.runs/<id>/before/ and
after/) and, when it was undone, the faceset folders the undo parked in _added/ or _split/;
such a run stays listed but can no longer be undone. --dry-run shows what would go."""
from __future__ import annotations

import json

from .common import say


def register(sub) -> None:
    p = sub.add_parser("history", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.add_argument("--keep", type=int, default=None, metavar="N",
                   help="remove the parked copies of all but the newest N runs (they can no "
                        "longer be undone)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --keep: print what would be removed, change nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..core.runs import pending
    from ..steps.curate import facesets_shown, history, plan_prune, prune

    root = Path(args.swap_ready).resolve()
    if args.keep is not None:
        if args.dry_run:
            plan = plan_prune(root, args.keep)
            for line in plan.lines():
                say(f"  {line}")
            say(f"library history --keep (dry run, nothing changed): {plan.line()}")
            return 0
        prune(root, args.keep, log=lambda m: say(f"library history --keep: {m}"))
    elif args.dry_run:
        raise ValueError("--dry-run goes with --keep N (library history alone changes nothing)")
    entries = history(root)
    for e in entries:
        state = f"undone by {e['undone_by']}" if e.get("undone_by") else "in effect"
        if e.get("undoes"):
            state = f"undoes {e['undoes']}"
        if e["pruned"]:
            state += "; pruned: can no longer be undone"
        say(f"{e['id']}  {e.get('when', '?')}  {e['step']:<16} {e.get('moves', 0)} moves, "
            f"{e.get('changed', 0)} files changed; {state}; "
            + (f"facesets {facesets_shown(root, e['facesets'])}; " if e.get("facesets") else "")
            + json.dumps(e.get("summary", {}), sort_keys=True))
    left = pending(root)
    for run_id in left:
        say(f"{run_id}  interrupted: the next command on this folder finishes it")
    say(f"history: {len(entries)} runs" + (f", {len(left)} interrupted" if left else ""))
    return 0
