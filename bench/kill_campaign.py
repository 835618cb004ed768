"""Kill every command of issue 8 at every file commit and check each re-run (exhaustive).

    python bench/kill_campaign.py [--only embed,run] [--every N] [--root DIR] [--details]

Per command (tests/killharness.py: embed, enrich, export-swap, run, extend, audit-apply):
run it once uninterrupted to count its commits N, then for k = 1..N (every N-th with
--every) run it killed right after commit k (FACESETS_KILL_AT_COMMIT), re-run it, and compare
with the uninterrupted run (files and bytes without timestamps, cache content, no leftover
temp files). Prints a line per differing or failed kill point, then the table:

    command | commits N | kill points tried | re-runs equal | differing | failed

"failed": the killed run did not die by SIGKILL nor finish, or the re-run exited non-zero.
Exit status 1 when any re-run differed or failed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from killharness import SCENARIOS, KillHarness  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated commands (default: all)")
    p.add_argument("--every", type=int, default=1, help="kill at every N-th commit (1)")
    p.add_argument("--root", default=None, help="work folder (default: a temp folder)")
    p.add_argument("--details", action="store_true",
                   help="print every difference of a kill point, not the first 12")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown command {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    root = Path(args.root or tempfile.mkdtemp(prefix="kill_campaign_"))
    rows = []
    for name in names:
        t0 = time.monotonic()
        h = KillHarness(SCENARIOS[name], root)
        h.prepare()
        n = h.run_reference()
        if h.reference_leftovers():
            print(f"  {name}: the uninterrupted run leaves {h.reference_leftovers()}")
        print(f"{name}: {n} commits; killing at every {'' if args.every == 1 else f'{args.every}th '}"
              "one", flush=True)
        counts = {"equal": 0, "differs": 0, "failed": 0}
        bad_points = []
        for k in range(1, n + 1, args.every):
            r = h.try_kill(k)
            counts[r.outcome] += 1
            if r.outcome != "equal":
                bad_points.append(k)
                text = r.line() if not args.details else (
                    r.line().split("\n")[0] + "".join(f"\n    {d}" for d in r.diffs))
                print(f"  {name} {text}", flush=True)
        rows.append((name, n, len(range(1, n + 1, args.every)), counts, bad_points,
                     time.monotonic() - t0))
    print()
    head = ("command", "commits N", "kill points tried", "re-runs equal", "differing",
            "failed", "differing/failed at k", "seconds")
    table = [head] + [(name, str(n), str(tried), str(c["equal"]), str(c["differs"]),
                       str(c["failed"]), ",".join(map(str, bad)) or "-", f"{sec:.0f}")
                      for name, n, tried, c, bad, sec in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print(f"\n(work folder {root})")
    return 1 if any(c["differs"] or c["failed"] for _, _, _, c, _, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
