"""Which decode scales lose nothing for recognition (evidence for analyze.MAX_MAGNIFICATION).

    python bench/bench_decode_scale.py [--n 40]

For every face of N 12-MP photos (bench/photos.py), the embedding from a full decode is
compared with the embeddings from 1/2 and 1/4 JPEG-scaled decodes, binned by how much the
recognition alignment magnifies the face in the reduced decode (facesets.core.analyze
.alignment_scale). Where agreement in a bin is as close as in the bins <= 1.0 (the face is
only shrunk, so the paths differ by resampling alone), that decode loses nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from photos import SHARED, make_photos  # noqa: E402

from facesets.core.analyze import alignment_scale  # noqa: E402
from facesets.backends import load_backend  # noqa: E402
from facesets.io.imageio import decode  # noqa: E402

BINS = [(0, 0.8), (0.8, 1.0), (1.0, 1.25), (1.25, 1.5), (1.5, 2.0), (2.0, 3.0), (3.0, 99)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    args = ap.parse_args()
    backend = load_backend("testpack_s", str(SHARED / "insightface"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in make_photos(Path(tmp), args.n, seed=3):
            data = p.read_bytes()
            full = decode(data, 1)
            faces = backend.detect(full)
            if not faces:
                continue
            backend.embed(full, faces)
            for factor in (2, 4):
                img = decode(data, factor)
                k = full.shape[1] / img.shape[1]
                local = [f.scaled(1 / k) for f in faces]
                backend.embed(img, local)
                for f, g in zip(faces, local):
                    cos = float(f.embedding @ g.embedding / np.linalg.norm(f.embedding)
                                / np.linalg.norm(g.embedding))
                    rows.append((alignment_scale(g.kps), cos))
    rows = np.array(rows)
    print(f"{'magnification':>14} {'faces':>6} {'cos min':>8} {'cos mean':>9}")
    for lo, hi in BINS:
        m = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
        if m.any():
            print(f"{lo:>6.2f}-{hi:<6.2f} {m.sum():>6} {rows[m, 1].min():>8.4f} "
                  f"{rows[m, 1].mean():>9.4f}")


if __name__ == "__main__":
    main()
