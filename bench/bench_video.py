"""Video targets: whole-pipeline throughput on CPU and where the time goes.

    python bench/bench_video.py [VIDEO_DIR] [--fps 2] [--det-size 640] [--reencode]
                                [--providers CPUExecutionProvider]

Runs scenes -> stage -> worker -> track -> cut in this process (the same step functions the
commands call) on VIDEO_DIR (default ../shared/testdata/video) with the offline testpack_s,
into a fresh temporary folder, and reports source frames per second of the whole pipeline
(every frame of every video counts, sampled or not) and the share of each phase:
  scenes   PySceneDetect: decode every frame + the detector's frame differences
  decode   the worker's decode of the sampled frames (seek + forward decode)
  detect   detection + embedding of the sampled frames (the model)
  track    tracks and segments
  cut      ffmpeg (stream copy, or H.264 with --reencode) + ffprobe
  other    model load, queue and results I/O
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FACESETS_SHARED") or ROOT.parent / "shared").resolve()

from facesets.core.thresholds import resolve_threshold  # noqa: E402
from facesets.formats import video as vf  # noqa: E402
from facesets.steps import video as step  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="?", default=str(SHARED / "testdata" / "video"))
    p.add_argument("--fps", type=float, default=step.DEFAULT_FPS)
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument("--threshold", type=float, default=0.65, help="testpack_s link distance")
    p.add_argument("--min-face-short", type=float, default=40.0)
    p.add_argument("--reencode", action="store_true")
    p.add_argument("--providers", default="CPUExecutionProvider")
    args = p.parse_args()

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        state, out = Path(tmp) / "state", Path(tmp) / "out"
        t0 = time.perf_counter()
        step.scan_scenes(args.videos, str(state), progress=False)
        times["scenes"] = time.perf_counter() - t0
        docs = [d for d in vf.all_scenes(state) if d["status"] == "ok"]
        frames = sum(d["frames"] for d in docs)
        seconds = sum(d["duration"] for d in docs)
        t = time.perf_counter()
        step.stage_video_queue(str(state), args.fps, "testpack_s",
                               str(SHARED / "insightface"), args.det_size)
        summary, job = step.run_worker_inprocess(str(state), args.providers, progress=False)
        worker = time.perf_counter() - t
        times["decode"], times["detect"] = job.timing["decode"], job.timing["detect"]
        t = time.perf_counter()
        params = step.TrackParams(threshold=resolve_threshold("track", {}, args.threshold),
                                  fps=args.fps, min_face_short=args.min_face_short)
        doc = step.track_segments(str(state), params)
        times["track"] = time.perf_counter() - t
        t = time.perf_counter()
        cut = step.cut_clips(str(state), str(out), args.reencode, progress=False)
        times["cut"] = time.perf_counter() - t
        total = time.perf_counter() - t0
        times["other"] = worker - times["decode"] - times["detect"]

    print(f"videos {len(docs)}, {frames} frames ({seconds:.1f} s of video), sampled "
          f"{job.frames} frames at {args.fps:g} fps, {job.faces} faces, "
          f"{len(doc['segments'])} segments, {cut.clips} clips "
          f"({'reencode' if args.reencode else 'stream copy'}), det_size {args.det_size}")
    print(f"whole pipeline: {total:.2f} s, {frames / total:.1f} source frames/s "
          f"({seconds / total:.2f}x real time); sampled frames {job.frames / worker:.1f}/s "
          "in the worker")
    for name in ("scenes", "decode", "detect", "track", "cut", "other"):
        print(f"  {name:7s} {times[name]:6.2f} s  {100 * times[name] / total:5.1f} %")


if __name__ == "__main__":
    main()
