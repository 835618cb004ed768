"""Queue path vs in-process embed: same 12-MP photos, same model and provider, one run.

    python bench/bench_worker.py [--n 60] [--rounds 2] [--providers CPUExecutionProvider]

In-process: `sort_faces.py embed SRC CACHE` (one subprocess). Queue path: `embed SRC CACHE
--stage-queue Q`, `work/embed_worker.py Q OUT`, `embed CACHE --merge-results OUT` (three
subprocesses, so it pays two extra interpreter starts and a model load in the worker). Every
command is timed as a whole (wall clock) with fresh caches; rounds alternate the order (ABBA)
to spread the machine's noise. Reports img/s of each, the queue path's overhead and the
worker's own throughput, and checks that both caches hold the same records.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from photos import SHARED, make_photos  # noqa: E402

PACK = ["--model", "testpack_s", "--model-root", str(SHARED / "insightface")]


def timed(*cmd) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - t, proc.stdout


def in_process(src: Path, work: Path, providers: list[str]) -> float:
    return timed("sort_faces.py", "embed", src, work / "a.npz", *PACK, *providers,
                 "--no-progress")[0]


def queue_path(src: Path, work: Path, providers: list[str]) -> tuple[float, float]:
    t_stage, _ = timed("sort_faces.py", "embed", src, work / "b.npz", "--stage-queue",
                       work / "q.json", *PACK, "--no-progress")
    t_worker, _ = timed("work/embed_worker.py", work / "q.json", work / "out", *providers,
                        "--no-progress")
    t_merge, _ = timed("sort_faces.py", "embed", work / "b.npz", "--merge-results",
                       work / "out")
    return t_stage + t_worker + t_merge, t_worker


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60, help="12-MP photos (60)")
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds (2)")
    ap.add_argument("--providers", default="CPUExecutionProvider")
    args = ap.parse_args()
    providers = ["--providers", args.providers]
    from test_worker import assert_same_records

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        make_photos(src, args.n, noface_every=5)
        ins, que, wrk = [], [], []
        for r in range(args.rounds):
            for order in (("in", "queue"), ("queue", "in")):
                for which in order:
                    work = tmp / f"r{r}-{order[0]}-{which}"
                    work.mkdir()
                    if which == "in":
                        ins.append(in_process(src, work, providers))
                    else:
                        total, worker = queue_path(src, work, providers)
                        que.append(total)
                        wrk.append(worker)
                        a = work.parent / f"r{r}-{order[0]}-in" / "a.npz"
                        if a.exists():
                            assert_same_records(work / "b.npz", a)
        ti, tq, tw = (statistics.median(x) for x in (ins, que, wrk))
        print(f"{args.n} photos (12 MP, 1-3 faces, every 5th without), providers "
              f"{args.providers}, {args.rounds} ABBA rounds, medians:")
        print(f"  in-process embed      {ti:7.2f} s  {args.n / ti:6.2f} img/s   runs "
              + ", ".join(f"{x:.2f}" for x in ins))
        print(f"  queue: stage+worker+merge {tq:7.2f} s  {args.n / tq:6.2f} img/s   runs "
              + ", ".join(f"{x:.2f}" for x in que))
        print(f"  of which worker       {tw:7.2f} s  {args.n / tw:6.2f} img/s")
        print(f"  queue path / in-process = {tq / ti:.3f} ({(tq / ti - 1) * 100:+.1f}%); "
              f"worker alone / in-process = {tw / ti:.3f}; records identical: yes")


if __name__ == "__main__":
    main()
