"""The CLIP worker end to end against the model alone (docs/benchmarks.md, "Worker overlap").

    python bench/bench_gpu_clip.py [--device cuda] [--model ViT-L-14] [--images 1000]
                                   [--batch 64] [--workers 12] [--out FILE]

Random weights (pretrained=None): the speed is the architecture's, not the weights'.
1. N face PNGs of 512 px from a few JPEGs (``.gpudata/*.jpg``, else ../shared/testdata/faces):
   random crops, flips and brightness, so every PNG differs; an occlusion queue over them.
2. model only: ``ClipScorer.run`` on an already preprocessed batch (host -> device, the
   head, device -> host), fp32 and (on a GPU) fp16 autocast, after two warm-up batches.
3. preprocessing alone (read + decode + ``ClipScorer.prepare``) over the prefetch pool.
4. ``work/clip_worker.py`` as the user runs it (a subprocess; its own rate, which excludes the
   model load): the overlapped loop (``--workers W``) in fp32 and fp16, and the serial loop
   (``--workers 0``, today's shape) in fp32; each worker's results are checked complete.
Prints and writes (``--out``) one figure per line and the worker / model-only ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def source_jpegs() -> list[Path]:
    for folder in (ROOT / ".gpudata", ROOT.parent / "shared" / "testdata" / "faces"):
        found = sorted(folder.rglob("*.jpg"))[:8]
        if found:
            return found
    raise SystemExit("no source JPEGs: copy a few face JPEGs into .gpudata/")


def make_pngs(export: Path, n: int, size: int = 512, seed: int = 0) -> list[dict]:
    """N distinct face PNGs (size x size) in export/fs_K/faces/, as occlusion queue items."""
    import cv2

    from facesets.io.fsutil import sha256_file

    bases = [cv2.imread(str(p)) for p in source_jpegs()]
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(n):
        img = bases[i % len(bases)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.7, 1.0))
        plans.append((i, img, int(rng.integers(0, h - side + 1)),
                      int(rng.integers(0, w - side + 1)), side, bool(rng.integers(2)),
                      float(rng.uniform(-30, 30))))

    def one(plan) -> dict:
        i, img, y, x, side, flip, shift = plan
        crop = cv2.resize(img[y:y + side, x:x + side], (size, size),
                          interpolation=cv2.INTER_CUBIC)
        crop = np.clip(crop.astype(np.int16) + int(shift), 0, 255).astype(np.uint8)
        if flip:
            crop = crop[:, ::-1]
        faceset, file = f"fs_{i // 100:03d}", f"faces/{i % 100:03d}.png"
        png = export / faceset / file
        png.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(png), np.ascontiguousarray(crop))
        return {"id": f"{faceset}/{file}", "path": str(png), "faceset": faceset, "file": file,
                "key": f"{faceset}:{i % 100}", "size": png.stat().st_size,
                "sha256": sha256_file(png)}

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return list(pool.map(one, plans))


def model_only(scorer, pixels: np.ndarray, reps: int, fp16: bool) -> float:
    scorer.fp16 = fp16
    for _ in range(2):
        scorer.run(pixels)
    t = time.perf_counter()
    for _ in range(reps):
        scorer.run(pixels)
    return reps * len(pixels) / (time.perf_counter() - t)


def preprocess_rate(scorer, items: list[dict], workers: int) -> float:
    from facesets.runtime.jobs import prefetch
    from facesets.steps.occlusion import read_rgb

    def prep(item):
        return scorer.prepare(read_rgb(Path(item["path"]).read_bytes()))

    t = time.perf_counter()
    for _ in prefetch(items, prep, workers):
        pass
    return len(items) / (time.perf_counter() - t)


def run_worker(queue: Path, results: Path, args, workers: int, fp16: bool) -> float:
    cmd = [sys.executable, str(ROOT / "work" / "clip_worker.py"), str(queue), str(results),
           "--scorer", "clip", "--clip-model", args.model, "--pretrained", "none",
           "--device", args.device, "--batch-size", str(args.batch),
           "--flush-every", str(args.batch), "--workers", str(workers),
           "--no-progress"] + (["--fp16"] if fp16 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    line = proc.stdout.strip().splitlines()[-1]
    got = re.search(r"done now (\d+).*?; ([\d.]+) png/s", line)
    if not got or int(got.group(1)) != args.images:
        raise SystemExit(f"worker did not score all {args.images} images: {line}")
    lines = results.read_text().splitlines()
    if len({json.loads(x)["id"] for x in lines}) != args.images:
        raise SystemExit(f"{results}: {len(lines)} records, not {args.images}")
    print(f"  worker: {line}", flush=True)
    return float(got.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 2))
    ap.add_argument("--reps", type=int, default=8, help="timed batches of the model-only runs")
    ap.add_argument("--no-serial", action="store_true", help="skip the serial worker run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from facesets.formats.queue import KIND_OCCLUSION, new_queue, write_queue
    from facesets.scorers.clip import ClipScorer
    from facesets.steps.occlusion import read_rgb

    out_lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        out_lines.append(text)

    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none"
    say(f"# bench_gpu_clip {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{args.model} random weights, device {args.device} ({gpu}), torch {torch.__version__}"
        f", {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {args.images} PNGs of 512 px"
        f", batch {args.batch}, prefetch workers {args.workers}")
    fp16_modes = [False, True] if args.device != "cpu" else [False]
    with tempfile.TemporaryDirectory(prefix="gpu_clip.") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        items = make_pngs(tmp / "export", args.images)
        queue = tmp / "queue.json"
        write_queue(queue, new_queue(KIND_OCCLUSION, {"export": str(tmp / "export"),
                                                      "export_run": "bench"}, items))
        say(f"made {len(items)} PNGs in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        scorer = ClipScorer(args.model, pretrained=None, device=args.device,
                            batch_size=args.batch)
        say(f"model built in {time.perf_counter() - t:.1f} s")
        crops = [read_rgb(Path(it["path"]).read_bytes()) for it in items[:args.batch]]
        pixels = scorer.pixels(crops)
        model_rate = {}
        for fp16 in fp16_modes:
            model_rate[fp16] = model_only(scorer, pixels, args.reps, fp16)
            say(f"model only, {'fp16' if fp16 else 'fp32'}, batch {args.batch}: "
                f"{model_rate[fp16]:.1f} img/s")
        scorer.fp16 = False
        for workers in sorted({1, args.workers}):
            say(f"preprocess only (read, decode, prepare), {workers} threads: "
                f"{preprocess_rate(scorer, items, workers):.1f} img/s")
        del scorer, pixels
        if args.device != "cpu":
            torch.cuda.empty_cache()
        runs = [(args.workers, fp16) for fp16 in fp16_modes]
        if not args.no_serial:
            runs.append((0, False))
        for n, (workers, fp16) in enumerate(runs):
            rate = run_worker(queue, tmp / f"results{n}.jsonl", args, workers, fp16)
            mode = "fp16" if fp16 else "fp32"
            loop = f"overlapped ({workers} threads)" if workers else "serial (today's loop)"
            say(f"worker end to end, {mode}, {loop}: {rate:.1f} img/s = "
                f"{100 * rate / model_rate[fp16]:.0f}% of the model-only rate")
    say(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.out:
        Path(args.out).write_text("\n".join(out_lines) + "\n")


if __name__ == "__main__":
    main()
