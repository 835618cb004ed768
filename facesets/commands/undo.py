"""library undo: reverse a recorded run of a swap-ready folder (default: the last run in effect):
the files it moved go back, the manifests it changed get their previous bytes, the bundles
it rebuilt are rebuilt from them. The undo is recorded as a run too."""
from __future__ import annotations

from .common import after_run, say


def register(sub) -> None:
    p = sub.add_parser("undo", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.add_argument("run_id", metavar="RUN_ID", nargs="?", default=None,
                   help="the run to undo (default: the last run not undone)")
    p.add_argument("--dry-run", action="store_true", help="print what would be undone")
    p.set_defaults(func=after_run(run, lambda a: a.swap_ready))


def run(args) -> int:
    from ..core import runs
    from ..core.library import Library
    from ..formats.manifest import ManifestError
    from ..steps.curate import describe_run

    library = Library(args.swap_ready, say)
    root = library.root
    # a dry run finishes nothing: it only says what an undo would reverse
    with library.open(finish=(lambda _root, _log: []) if args.dry_run else None):
        if not args.dry_run:
            finished = library.finished
            # a run committed before a kill whose report is still to rewrite: when it is
            # this undo, after_run's report rewrite is what is left to do
            stale = runs.report_pending(root)
            for run_id in finished + ([stale] if stale and stale not in finished else []):
                undone = runs.record_of(root, run_id).get("undoes")
                if undone and args.run_id in (None, undone):
                    # this undo was killed before it finished: finishing it was the job
                    say(f"undo: finished the interrupted undo of run {undone} (run {run_id})")
                    return 0
        target, problems = runs.plan_undo(root, args.run_id)
        if args.run_id is not None and target.get("undone_by"):
            say(f"undo: run {target['id']} was undone already by {target['undone_by']}; "
                "nothing changed")
            return 0
        if problems:
            raise ManifestError(f"{root}: cannot undo run {target['id']}: "
                                + "; ".join(problems[:5]))
        what = describe_run(root, target)
        if args.run_id is None:   # a bare undo says which run it chose, and why that one
            entries = runs.load_top(root).get("runs", [])
            later = entries[entries.index(target) + 1:]
            skipped = [e["id"] for e in later if e.get("undone_by") or e.get("undoes")]
            say(f"undo: the newest run still in effect is {what}"
                + (f"; the {len(skipped)} later runs are undone or undos already"
                   if skipped else ""))
        if args.dry_run:
            say(f"undo (dry run, nothing changed): {what}")
            return 0
        undo_id = runs.prepare_undo(root, target["id"])
        runs.execute(root, undo_id, library.detail)
    say(f"undo: reversed {what} (run {undo_id})")
    return 0
