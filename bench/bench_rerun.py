"""A re-run of `embed` over an unchanged tree of 10,000 files (target: under 10 s).

    python bench/bench_rerun.py [--files 10000]

Writes N small distinct JPEG files, records them in a cache as a finished embed would (with
~1.2 faces per file of 512-D embeddings, built without a model to keep the setup short),
then times the real command `sort_faces.py embed SRC CACHE` as a subprocess: python start,
imports, cache load, listing, stat of every file, and the comparison. The model is never
loaded because nothing is new.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from synthetic_cache import face_rows  # noqa: E402

from facesets.formats.cache import SegmentWriter, compact_cache  # noqa: E402
from facesets.sources.folder import list_images, sha256_file  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        src, cache = Path(tmp) / "photos", Path(tmp) / "c.npz"
        for i in range(args.files):
            d = src / f"{i // 500:03d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 24), tuple(int(v) for v in rng.integers(0, 255, 3))).save(
                d / f"IMG_{i:05d}.jpg", quality=90, comment=str(i).encode())
        writer = SegmentWriter(cache, {"model": "testpack_s", "model_id": "synthetic",
                                       "embedding_dim": 512})
        for p in list_images(str(src)):
            st = os.stat(p)
            sha = sha256_file(p)
            writer.add("paths", path=p, sha256=sha, size=st.st_size, mtime_ns=st.st_mtime_ns,
                       error="")
            writer.add("files", sha256=sha, path=p, width=32, height=24, status="face", error="")
            for row in face_rows([sha], rng):
                writer.add("faces", **row)
        writer.flush()
        compact_cache(cache)
        cmd = [sys.executable, str(ROOT / "sort_faces.py"), "embed", str(src), str(cache),
               "--model", "testpack_s", "--no-progress"]
        times = []
        for _ in range(3):
            t = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            times.append(time.perf_counter() - t)
        print(out.strip())
        print(f"re-run over {args.files} unchanged files: best {min(times):.2f} s, "
              f"runs {', '.join(f'{t:.2f}' for t in times)} s (target < 10 s)")


if __name__ == "__main__":
    main()
