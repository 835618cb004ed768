"""Embed throughput on 12-MP photos: `embed` vs a naive loop, same model, same run.

    python bench/bench_embed.py [--n 40] [--rounds 2] [--workers 2,3]

The naive loop is what a first script does: cv2.imread (full decode) + FaceAnalysis.get per
file. Both find faces with the same pack (testpack_s, offline). Reports img/s of each, the
ratio, and whether both found the same faces (count per file, embedding similarity).
``--workers 2,3``: embed once per decode-thread count in every round (the default:
core/analyze.DECODE_WORKERS), each reported; the ratio is the default's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from photos import SHARED, make_photos  # noqa: E402

from facesets.backends import load_backend  # noqa: E402
from facesets.core.analyze import DECODE_WORKERS  # noqa: E402
from facesets.formats.cache import load_cache  # noqa: E402
from facesets.steps.embed import embed_folder  # noqa: E402

PACK = ("testpack_s", str(SHARED / "insightface"))


def naive(paths):
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=PACK[0], root=PACK[1], providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    t = time.perf_counter()
    found = {}
    for p in paths:
        found[str(p)] = app.get(cv2.imread(str(p)))
    return time.perf_counter() - t, found


def ours(src, cache, backend, workers: int = DECODE_WORKERS):
    """The whole embed run (listing, hashing, decoding, inference, cache writes and
    compaction); the model is loaded beforehand, as the naive loop's is."""
    t = time.perf_counter()
    embed_folder(str(src), str(cache), load=lambda: backend, model=PACK[0], progress=False,
                 workers=workers)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", default=str(DECODE_WORKERS),
                    help="decode thread counts to compare, comma-separated (the first is "
                         "the one the ratio uses)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_photos(tmp / "src", args.n, noface_every=5)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        print(f"{args.n} photos 4000x3000, {mb:.1f} MB each on average")
        t_naive, t_ours = [], []
        t_by = {w: [] for w in counts}
        backend = load_backend(*PACK)
        for r in range(args.rounds):  # alternate so drift hits both alike
            tn, found = naive(paths)
            t_naive.append(tn)
            for w in counts:
                cache = tmp / f"c{r}_{w}.npz"
                t_by[w].append(ours(tmp / "src", cache, backend, w))
            t_ours.append(t_by[counts[0]][-1])
            cache = tmp / f"c{r}_{counts[0]}.npz"
            print(f"round {r}: naive {args.n / tn:.2f} img/s, embed "
                  + ", ".join(f"{args.n / t_by[w][-1]:.2f} img/s ({w} decode threads)"
                              for w in counts))
        c = load_cache(cache)
        by_path = dict(zip(c.files["path"].tolist(), c.files["sha256"].tolist()))
        same_count, sims, unmatched = 0, [], 0
        for p, faces in found.items():
            rows = np.flatnonzero(c.faces["sha256"] == by_path[p])
            same_count += len(rows) == len(faces)
            for f in faces:  # the same face: bbox overlap (IoU) >= 0.5
                if not len(rows):
                    unmatched += 1
                    continue
                b = c.faces["bbox"][rows]
                iw = np.clip(np.minimum(b[:, 2], f.bbox[2]) - np.maximum(b[:, 0], f.bbox[0]), 0, None)
                ih = np.clip(np.minimum(b[:, 3], f.bbox[3]) - np.maximum(b[:, 1], f.bbox[1]), 0, None)
                area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
                iou = iw * ih / (area(b) + area(f.bbox) - iw * ih)
                if iou.max() < 0.5:
                    unmatched += 1
                    continue
                e = c.faces["embedding"][rows[np.argmax(iou)]]
                sims.append(float(e @ f.embedding / np.linalg.norm(e)
                                  / np.linalg.norm(f.embedding)))
        n_faces = sum(len(v) for v in found.values())
        best_naive, best_ours = min(t_naive), min(t_ours)
        print(f"naive loop: {args.n / best_naive:.2f} img/s (best of {args.rounds})")
        print(f"embed     : {args.n / best_ours:.2f} img/s (best of {args.rounds}, "
              "includes hashing and cache writes)")
        print(f"speed-up  : {best_naive / best_ours:.2f}x ({counts[0]} decode threads)")
        for w in counts[1:]:
            print(f"  with {w} decode threads: {args.n / min(t_by[w]):.2f} img/s, "
                  f"{best_naive / min(t_by[w]):.2f}x")
        print(f"faces     : naive {n_faces}, embed {c.n_faces}; same count in "
              f"{same_count}/{args.n} files; {len(sims)} naive faces matched (IoU >= 0.5), "
              f"{unmatched} not; embedding cosine similarity of matched faces min "
              f"{min(sims):.4f}, mean {np.mean(sims):.4f}")


if __name__ == "__main__":
    main()
