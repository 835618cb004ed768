"""The fp16 CLIP graph (`occlusion export-onnx --fp16`): size, scores against fp32, speed
(docs/benchmarks.md, "fp16 CLIP graph").

    python bench/bench_fp16_export.py [--model ViT-L-14] [--faces 24] [--batch 8] [--only fp16]

Random weights (pretrained=None) with the logit scale set to 100, a trained CLIP's (random
weights' 14.3 would shrink every score difference sevenfold). Exports the zero-shot head in
fp32 and fp16, then scores real faces (the LFW test photos, ../shared/testdata/faces) with
torch fp32, ONNX Runtime fp32 and ONNX Runtime fp16 (CPU provider): the files' sizes, the
largest score difference of each graph from torch, and img/s.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def faces(n: int) -> list[np.ndarray]:
    from PIL import Image

    paths = sorted((ROOT.parent / "shared" / "testdata" / "faces").rglob("*.jpg"))
    step = max(1, len(paths) // n)
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths[::step][:n]]


def rate(scorer, crops, batch: int) -> tuple[list[dict], float]:
    scorer.score(crops[:batch])  # warm-up
    t = time.perf_counter()
    out = []
    for i in range(0, len(crops), batch):
        out += scorer.score(crops[i:i + batch])
    return out, len(crops) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--faces", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", choices=("fp32", "fp16"), default=None,
                    help="export and score one precision only")
    args = ap.parse_args()
    from facesets.scorers import scorer_from_spec
    from facesets.scorers.clip import ClipScorer

    print(f"# {args.model}, random weights, logit scale 100, {args.faces} LFW faces, batch "
          f"{args.batch}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    clip = ClipScorer(args.model, pretrained=None, batch_size=args.batch)
    clip.logit_scale = 100.0
    clip.head.scale.fill_(100.0)
    crops = faces(args.faces)
    ref, torch_rate = rate(clip, crops, args.batch)
    print(f"torch fp32: {torch_rate:.2f} img/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="fp16.") as tmp:
        for fp16 in (False, True):
            if args.only and args.only != ("fp16" if fp16 else "fp32"):
                continue
            path = Path(tmp) / f"clip{'16' if fp16 else '32'}.onnx"
            t = time.perf_counter()
            clip.export_onnx(path, fp16=fp16)
            took = time.perf_counter() - t
            onnx = scorer_from_spec(f"onnx:{path}", batch_size=args.batch)
            got, ort_rate = rate(onnx, crops, args.batch)
            diff = max(abs(g[a] - r[a]) for g, r in zip(got, ref) for a in clip.attributes)
            spread = max(r[a] for r in ref for a in clip.attributes) - \
                min(r[a] for r in ref for a in clip.attributes)
            print(f"ONNX {'fp16' if fp16 else 'fp32'}: {path.stat().st_size / 1e6:.0f} MB "
                  f"(export {took:.0f} s), max |score - torch fp32| {diff:.2e} (scores span "
                  f"{spread:.3f}), ONNX Runtime CPU {ort_rate:.2f} img/s", flush=True)
            del onnx
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
