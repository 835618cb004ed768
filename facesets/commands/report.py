"""library report: (re)write OUT/index.html, the overview page of an output folder of cluster,
refine or export-swap (one card per person / faceset: face crops, counts, name, links,
export-swap's top-N with scores). Every command that writes such a folder writes it too;
this command rewrites it, e.g. after NAME.txt files were edited by hand. The page opens
from disk (no network); thumbnails are kept in OUT/_thumbs/."""
from __future__ import annotations

from .common import add_progress_option, say


def register(sub) -> None:
    p = sub.add_parser("report", description=__doc__)
    p.add_argument("out", metavar="OUT", help="output folder of cluster, refine or export-swap")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..formats.report import write_report
    from ..io.fsutil import output_lock

    out = Path(args.out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such folder")
    with output_lock(out):
        path = write_report(out, args.progress)
    say(f"report: {path.resolve().as_uri()}")
    return 0
