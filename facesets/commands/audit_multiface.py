"""audit-multiface: re-detect every face PNG of an export-swap output; drop those that do not
show exactly one face (moved to <faceset>/faces/_dropped/, bundles rebuilt).

  audit-multiface stage OUT_DIR QUEUE          queue every face PNG of OUT_DIR
  work/multiface_worker.py QUEUE RESULTS        (GPU side) count faces per PNG (JSON Lines)
  audit-multiface apply QUEUE RESULTS [--dry-run]
"""
from __future__ import annotations

import argparse

from .common import add_model_options, say


def register(sub) -> None:
    p = sub.add_parser("audit-multiface", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = p.add_subparsers(dest="step", metavar="STEP")
    steps.required = True
    s = steps.add_parser("stage", help="queue every face PNG of an export-swap output")
    s.add_argument("out_dir", metavar="OUT_DIR", help="output folder of export-swap")
    s.add_argument("queue", metavar="QUEUE", help="queue JSON to write")
    add_model_options(s)
    s.set_defaults(model=None, func=run_stage)  # default: the export's own model pack
    a = steps.add_parser("apply", help="drop the PNGs the worker found 0 or 2+ faces in")
    a.add_argument("queue", metavar="QUEUE", help="the queue JSON that `stage` wrote")
    a.add_argument("results", metavar="RESULTS", help="JSON Lines the worker wrote")
    a.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    a.set_defaults(func=run_apply)


def run_stage(args) -> int:
    from ..steps.audit import stage_multiface_queue

    n = stage_multiface_queue(args.out_dir, args.queue, args.model, args.model_root,
                              args.det_size)
    say(f"audit-multiface: queued {n} face PNGs of {args.out_dir}; queue {args.queue}")
    return 0


def run_apply(args) -> int:
    from ..core.library import Library
    from ..steps.audit import apply_audit, plan_audit, resume_audit

    plan = plan_audit(args.queue, args.results)
    if args.dry_run:
        for line in plan.lines():
            say(f"  {line}")
        say(f"audit-multiface (dry run, nothing changed): {plan.line()}")
        return 0
    library = Library(plan.export, say)
    resumed = []    # audit runs finish themselves (their plan file, not .runs/)
    with library.open(finish=lambda root, log: resumed.append(resume_audit(root, log))):
        if resumed[0] is not None:
            plan = plan_audit(args.queue, args.results)   # planned again after the resumed run
        if plan.applied is not None:
            r = plan.applied
            say(f"audit-multiface: run {plan.run_id} of these results was applied already "
                f"({r.get('when')}: dropped {r.get('dropped')} PNGs); nothing changed")
            library.report()
            return 0
        for line in plan.lines():
            library.detail(line)
        record = apply_audit(plan, log=library.detail)
        library.report()
    say(f"audit-multiface: {plan.line()}; dropped {record['dropped']} PNGs, rebuilt "
        f"{len(plan.facesets())} facesets (run {plan.run_id})")
    return 0
