"""The video face worker with frames decoded ahead of the model vs the serial loop.

    python bench/bench_video_overlap.py [--fps 8] [--det-size 640] [--rounds 2]

Stages the real clips of ../shared/testdata/video (scenes + stage, testpack_s offline) and
runs `work/video_face_worker.py` as the user does, `--workers 0` (serial: decode, then the
model) and `--workers 2` (runtime.jobs.prefetch_stream), ABBA order so drift hits both
alike. Reports frames/s of each (whole processes: start-up included) and whether the two
wrote the same records (timings aside).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
VIDEO = SHARED / "testdata" / "video"
WORKER = ROOT / "work" / "video_face_worker.py"


def cli(*args):
    subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), *map(str, args)], check=True,
                   capture_output=True)


def records(log: Path) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        rec.pop("timing", None)
        out.append(json.dumps(rec, sort_keys=True))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--det-size", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videos = tmp / "videos"
        videos.mkdir()
        for clip in VIDEO.glob("*.mp4"):
            os.symlink(clip, videos / clip.name)
        state = tmp / "state"
        cli("video", "scenes", videos, state, "--no-progress")
        cli("video", "stage", state, "--model", "testpack_s", "--model-root",
            SHARED / "insightface", "--fps", args.fps, "--det-size", args.det_size)
        times = {0: [], 2: []}
        outs = {}
        order = [0, 2, 2, 0] * ((args.rounds + 1) // 2)
        for i, workers in enumerate(order[:2 * args.rounds]):
            out = tmp / f"out{i}"
            t = time.perf_counter()
            subprocess.run([sys.executable, str(WORKER), str(state / "queue.json"), str(out),
                            "--no-progress", "--workers", str(workers)], check=True,
                           capture_output=True)
            times[workers].append(time.perf_counter() - t)
            outs[workers] = out / "frames.jsonl"
        frames = sum(len(json.loads(r)["frames"]) for r in records(outs[0]))
        same = records(outs[0]) == records(outs[2])
        print(f"{frames} frames ({args.fps:g} fps, det {args.det_size}) of "
              f"{len(records(outs[0]))} shots; load average {os.getloadavg()[0]:.1f}")
        for w, label in ((0, "serial (--workers 0)"), (2, "overlapped (--workers 2)")):
            rates = ", ".join(f"{frames / t:.1f}" for t in times[w])
            print(f"{label:26s}: best {frames / min(times[w]):.1f} frames/s ({rates})")
        print(f"speed-up {min(times[0]) / min(times[2]):.2f}x; same records: {same}")


if __name__ == "__main__":
    main()
