"""Start-up time of the command line (results and commands in docs/benchmarks.md,
"## Command-line start-up").

    python bench/bench_cli_startup.py [--runs 9] [--root CHECKOUT ...]

Median wall time of `sort_faces.py --help`, of a few `COMMAND --help`, and of two commands
that stop at once on a missing input (what a test's subprocess pays before its work), for
each CHECKOUT given (default: this one); compare two checkouts (e.g. a `git worktree` of an
older commit) on the same machine in one run, as the figures depend on its load.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [["--help"], ["rename", "--help"], ["embed", "--help"], ["run", "--help"],
         ["eras", "--help"], ["occlusion", "--help"],
         ["history", "/nonexistent/swap_ready"], ["embed", "/nonexistent/photos", "/tmp/x.npz"]]


def median_seconds(root: Path, words: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(root / "sort_faces.py"), *words],
                       capture_output=True, cwd=root)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--root", type=Path, nargs="+", default=[ROOT])
    args = ap.parse_args()
    print("command".ljust(44) + "".join(str(r)[-24:].rjust(26) for r in args.root))
    for words in CASES:
        cells = [f"{median_seconds(r, words, args.runs):.3f} s" for r in args.root]
        print(" ".join(words).ljust(44) + "".join(c.rjust(26) for c in cells))


if __name__ == "__main__":
    main()
