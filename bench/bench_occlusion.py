"""The occlusion filter's speed (docs/benchmarks.md, "Occlusion filter").

    python bench/bench_occlusion.py apply [--facesets 300] [--faces 20]
    python bench/bench_occlusion.py clip [--models ViT-B-32 ViT-L-14] [--images 16]
    python bench/bench_occlusion.py classifier [--images 64]

apply: a synthetic swap-ready folder of N facesets (F face PNGs each, bundles, manifests as
export-swap writes them) and a scores file flagging faces in the proportions of the user's
real run (311 facesets: 46 pruned, 51 masked, 3 thin); times ``occlusion apply`` (plan:
every PNG hashed against the scores; the recorded run: moves, bundles rebuilt, manifests)
and ``undo`` of it, each as the CLI runs it (a subprocess, wall time).
clip: open_clip image towers with random weights (pretrained=None), CPU: torch img/s of the
zero-shot head, then the same head exported to ONNX and run by ONNX Runtime (CPU provider),
and the largest score difference between the two.
classifier: a ResNet18-shaped binary classifier (torchvision's resnet18, random weights,
2 outputs) exported to ONNX: img/s through the ``onnx:PATH`` scorer on 224 x 224 crops.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_export(root: Path, n: int, faces: int, seed: int = 0) -> Path:
    """A swap-ready folder and a scores file for it; returns the scores path."""
    from PIL import Image

    from facesets.formats.manifest import SWAP_FACESET_MANIFEST, new_manifest, write_manifest
    from facesets.formats.occlusion import new_scores, write_scores
    from facesets.formats.swapset import (faceset_listing, faceset_manifest, swap_manifest,
                                          write_bundles)
    from facesets.io.fsutil import sha256_file

    rng = np.random.default_rng(seed)
    head = new_manifest(SWAP_FACESET_MANIFEST, str(root / "c.npz"),
                        {"model": "buffalo_l", "model_id": "synthetic"}, {})
    listing, scored = [], {}
    for i in range(n):
        name = f"faceset_{i:03d}"
        fdir = root / name
        (fdir / "faces").mkdir(parents=True)
        # verdicts in the user's proportions: 15% pruned, 16% masked, 1% thin, rest clean
        kind = "prune" if i % 20 < 3 else "masked" if i % 20 < 6 else \
            "thin" if i % 100 == 99 else "keep"
        count = 6 if kind == "thin" else faces
        flagged = {"prune": 3, "masked": count // 2, "thin": 2, "keep": 0}[kind]
        entries, scored[name] = [], []
        for r in range(count):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buf, "PNG")
            (fdir / "faces" / f"{r:03d}.png").write_bytes(buf.getvalue())
            entries.append({"rank": r, "file": f"faces/{r:03d}.png", "key": f"{name}:{r}",
                            "score": 1.0 - r / count})
            p = 0.9 if r >= count - flagged else 0.05
            scored[name].append({"file": f"faces/{r:03d}.png", "key": f"{name}:{r}",
                                 "sha256": sha256_file(fdir / "faces" / f"{r:03d}.png"),
                                 "scores": {"mask": p, "sunglasses": 0.1}})
        m = faceset_manifest(head, name, name, "run0", 30, rng.standard_normal(8), entries, [],
                             count, [])
        write_bundles(fdir, m)
        write_manifest(fdir / "manifest.json", m)
        listing.append(faceset_listing(m))
    top = swap_manifest(head, "run0", str(root / "refine.json"), listing,
                        {"to": {}, "new": []}, {}, n * faces, {}, 0, 0, 0.0)
    write_manifest(root / "manifest.json", top)
    scores = root.parent / "scores.json"
    write_scores(scores, new_scores(str(root), "run0", "/q.json", [], ["synthetic"], scored,
                                    [], []))
    return scores


def cli(*args) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), *map(str, args)],
                         capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t0, out


def bench_apply(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "swap"
        t0 = time.perf_counter()
        scores = build_export(root, args.facesets, args.faces)
        print(f"built {args.facesets} facesets ({sum(1 for _ in root.rglob('*.png'))} PNGs) "
              f"in {time.perf_counter() - t0:.1f} s")
        dt, _ = cli("occlusion", "apply", scores, "--dry-run")
        print(f"apply --dry-run: {dt:.2f} s")
        dt, out = cli("occlusion", "apply", scores)
        line = next(x for x in out.splitlines() if x.startswith("occlusion apply:"))
        print(f"apply: {dt:.2f} s  ({line[:200]})")
        dt, _ = cli("undo", root)
        print(f"undo: {dt:.2f} s")


def bench_clip(args) -> None:
    import torch

    from facesets.scorers.clip import ClipScorer
    from facesets.scorers.onnx_classifier import OnnxScorer
    from facesets.steps.occlusion import check_images, compare_scorers

    torch.set_num_threads(args.threads or torch.get_num_threads())
    images = check_images(args.images, 256)
    for name in args.models:
        t0 = time.perf_counter()
        s = ClipScorer(name, pretrained=None, batch_size=args.batch)
        build = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            t0 = time.perf_counter()
            s.export_onnx(path)
            export = time.perf_counter() - t0
            size = path.stat().st_size / 2**20
            o = OnnxScorer(str(path), "CPUExecutionProvider", batch_size=args.batch)
            s.score(images[:2])
            o.score(images[:2])             # warm-up
            r = compare_scorers(s, o, images, repeat=args.repeat)
        print(f"{name} (random weights, {s.size} px, logit scale {s.logit_scale:.2f}): "
              f"torch {r['a_img_s']:.2f} img/s, ONNX Runtime {r['b_img_s']:.2f} img/s "
              f"({r['b_img_s'] / r['a_img_s']:.2f}x), max abs score difference "
              f"{r['max_abs_diff']:.2e}; build {build:.1f} s, export {export:.1f} s, "
              f"{size:.0f} MiB", flush=True)
        del s, o


def bench_classifier(args) -> None:
    import torch

    from facesets.scorers.clip import import_open_clip
    from facesets.scorers.onnx_classifier import OnnxScorer

    import_open_clip()    # torchvision's import, as the clip scorer does it
    import torchvision
    net = torchvision.models.resnet18(num_classes=2).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18_occlusion.onnx"
        torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
        s = OnnxScorer(str(path), "CPUExecutionProvider", batch_size=args.batch)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
                  for _ in range(args.images)]
        s.score_all(images[:4])
        best = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            s.score_all(images)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        t0 = time.perf_counter()
        from facesets.scorers.preprocess import to_tensor
        to_tensor(images, 224)
        pre = time.perf_counter() - t0
    print(f"ResNet18 classifier (ONNX Runtime CPU, batch {args.batch}): "
          f"{len(images) / best:.1f} img/s from 512 px crops (preprocessing alone "
          f"{len(images) / pre:.0f} img/s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("apply")
    a.add_argument("--facesets", type=int, default=300)
    a.add_argument("--faces", type=int, default=20)
    c = sub.add_parser("clip")
    c.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    c.add_argument("--images", type=int, default=16)
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--repeat", type=int, default=2)
    c.add_argument("--threads", type=int, default=None)
    k = sub.add_parser("classifier")
    k.add_argument("--images", type=int, default=64)
    k.add_argument("--batch", type=int, default=16)
    k.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    {"apply": bench_apply, "clip": bench_clip, "classifier": bench_classifier}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
