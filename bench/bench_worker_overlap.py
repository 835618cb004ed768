"""Worker loops: end to end against the model alone, overlapped against today's serial loop
(docs/benchmarks.md, "Worker overlap").

    python bench/bench_worker_overlap.py [--images 160] [--model-ms 30] [--workers 2]

The workers' own jobs (steps/occlusion.OcclusionJob, steps/audit.MultifaceJob) through the
one job loop (runtime.worker.run_job), over face PNGs of 512 px, with stand-in models so that
the pipeline is what is timed:
- near-free: a model that costs nothing (constant scores; no faces): the end-to-end rate is
  the pipeline's own ceiling (read, hash, decode, preprocess, record, flush);
- GPU-like: a model that waits ``--model-ms`` per image without holding the CPU or the GIL,
  as a GPU does: its model-only rate is 1000 / model-ms img/s, and a loop that keeps it fed
  reaches it.
Each is run with ``--workers 0`` (today's loop: read, decode and preprocess, then infer) and
with the prefetch pool (``--workers W``), in-process, fresh results each time, order ABBA.
Also the occlusion worker script itself (``work/clip_worker.py``, a subprocess) with the
ONNX classifier stand-in (tests/onnx_models.py: a near-free graph) serial and overlapped.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_gpu_clip import make_pngs  # noqa: E402

from facesets.formats.queue import KIND_MULTIFACE, KIND_OCCLUSION, new_queue  # noqa: E402
from facesets.runtime.pathmap import PathMapper  # noqa: E402
from facesets.runtime.worker import run_job, work_items  # noqa: E402
from facesets.scorers.base import FaceScorer  # noqa: E402
from facesets.scorers.preprocess import to_chw  # noqa: E402


class StandInScorer(FaceScorer):
    """CLIP's preprocessing (224 px, bicubic) and a model that waits ``seconds`` per image
    (0: costs nothing)."""

    name, attributes = "stand-in", ("mask",)

    def __init__(self, seconds: float, batch_size: int):
        self.seconds, self.batch_size = seconds, batch_size

    def prepare(self, image):
        return to_chw(image, 224, interpolation="bicubic")

    def score_prepared(self, prepared):
        if self.seconds:
            time.sleep(self.seconds * len(prepared))
        return [{"mask": 0.5} for _ in prepared]


class StandInBackend:
    """A detector that waits ``seconds`` per image and finds no face."""

    providers = ["stand-in"]

    def __init__(self, seconds: float):
        self.seconds = seconds

    def detect(self, image):
        if self.seconds:
            time.sleep(self.seconds)
        return []

    def active_providers(self):
        return self.providers


def occlusion_rate(queue: dict, tmp: Path, tag: str, seconds: float, workers: int,
                   batch: int) -> float:
    from facesets.steps.occlusion import OcclusionJob

    results = tmp / f"occ.{tag}.jsonl"
    job = OcclusionJob(queue, str(results), lambda: StandInScorer(seconds, batch), batch,
                       workers)
    s = run_job(job, work_items(queue, PathMapper(None, [], windows=False)),
                tmp / f"occ.{tag}.failures.jsonl", batch, progress=False)
    assert s.done == len(queue["items"]), s.line()
    return s.done / s.seconds


def multiface_rate(queue: dict, tmp: Path, tag: str, seconds: float, workers: int,
                   batch: int) -> float:
    from facesets.formats.queue import JsonlAppender
    from facesets.steps.audit import MultifaceJob

    results = tmp / f"mf.{tag}.jsonl"

    class Job(MultifaceJob):
        def start(self):
            self.backend, self.log = StandInBackend(seconds), JsonlAppender(self.results)

    job = Job(queue, str(results), None, workers=workers)
    s = run_job(job, work_items(queue, PathMapper(None, [], windows=False)),
                tmp / f"mf.{tag}.failures.jsonl", batch, progress=False)
    assert s.done == len(queue["items"]), s.line()
    return s.done / s.seconds


def script_rate(queue_path: Path, results: Path, model: Path, workers: int,
                batch: int) -> float:
    proc = subprocess.run([sys.executable, str(ROOT / "work" / "clip_worker.py"),
                           str(queue_path), str(results), "--scorer", f"onnx:{model}",
                           "--batch-size", str(batch), "--flush-every", str(batch),
                           "--workers", str(workers), "--no-progress"],
                          capture_output=True, text=True, check=True)
    return float(re.search(r"([\d.]+) png/s", proc.stdout).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--model-ms", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    from facesets.formats.queue import write_queue
    from onnx_models import occlusion_classifier

    print(f"# {args.images} PNGs of 512 px, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}, batch {args.batch}, prefetch workers {args.workers}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="overlap.") as tmp:
        tmp = Path(tmp)
        items = make_pngs(tmp / "export", args.images)
        params = {"export": str(tmp / "export"), "export_run": "bench"}
        occ = new_queue(KIND_OCCLUSION, params, items)
        mf = new_queue(KIND_MULTIFACE, dict(params, model="stand-in", det_size=640), items)
        n = 0
        for kind, rate_of in (("occlusion", occlusion_rate), ("multiface", multiface_rate)):
            for label, seconds in (("near-free model", 0.0),
                                   (f"GPU-like model ({args.model_ms:g} ms/img, model only "
                                    f"{1000 / args.model_ms:.0f} img/s)",
                                    args.model_ms / 1000)):
                rates: dict[int, list[float]] = {0: [], args.workers: []}
                for workers in (0, args.workers, args.workers, 0):   # ABBA
                    n += 1
                    queue = occ if kind == "occlusion" else mf
                    rates[workers].append(rate_of(queue, tmp, str(n), seconds, workers,
                                                  args.batch))
                serial, overlap = (float(np.mean(rates[w])) for w in (0, args.workers))
                line = (f"{kind} worker, {label}: serial {serial:.1f} img/s, overlapped "
                        f"{overlap:.1f} img/s ({overlap / serial:.2f}x)")
                if seconds:
                    line += (f"; {100 * serial * seconds:.0f}% / {100 * overlap * seconds:.0f}%"
                             " of the model-only rate")
                print(line, flush=True)
        qpath = tmp / "q.json"
        write_queue(qpath, occ)
        model = occlusion_classifier(tmp / "c.onnx")
        rates = {w: script_rate(qpath, tmp / f"s{w}.jsonl", model, w, args.batch)
                 for w in (0, args.workers)}
        print(f"work/clip_worker.py, ONNX stand-in classifier (near-free): serial "
              f"{rates[0]:.1f} png/s, overlapped {rates[args.workers]:.1f} png/s "
              f"({rates[args.workers] / rates[0]:.2f}x)", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
