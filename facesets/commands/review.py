"""library review: look at a swap-ready folder in the browser and fix it: rename, merge, split, drop
faces, move a face, quarantine, history with undo; suggestions (facesets consolidate would
merge, facesets likely to hold two people). A local server bound to 127.0.0.1 only; the URL it
prints carries a token every request for data must give. Every action is a recorded run of
the same library functions the CLI commands call (undoable). Ctrl-C stops it."""
from __future__ import annotations

from .common import say
from .options import add_consolidate_thresholds, add_flag


def register(sub) -> None:
    p = sub.add_parser("review", description=__doc__)
    p.add_argument("swap_ready", metavar="SWAP_READY", help="output folder of export-swap")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the URL only")
    add_consolidate_thresholds(p, " (for the merge suggestions)")
    add_flag(p, "--split-threshold", type=float, default=None,
             more=" (when a split has no face selected; default: the model's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..review.server import serve
    from .common import swap_ready_meta

    root = Path(args.swap_ready).resolve()
    httpd, url = serve(root, swap_ready_meta(root), args.port, args.group_threshold,
                       args.confident_threshold, log=lambda m: say(f"  {m}"),
                       split_threshold=args.split_threshold)
    say(f"review: {root} at {url}")
    say("review: Ctrl-C stops the server")
    if not args.no_browser:
        import webbrowser
        webbrowser.open(url)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        say("review: stopped")
    finally:
        httpd.server_close()
    return 0
