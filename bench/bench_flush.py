"""Flush cost vs cache size: an embed flush (50 files) must not grow with the cache.

    python bench/bench_flush.py [--sizes 1000 10000 100000] [--repeat 10]

For each size a base cache of that many 512-D faces is written, then 50-file flushes
(SegmentWriter.flush, what embed does) are timed; the baseline is rewriting the whole cache
per flush (save_cache), what a naive design does.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from synthetic_cache import face_rows, synthetic_cache  # noqa: E402

from facesets.formats.cache import SegmentWriter, save_cache  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    print(f"{'faces':>8} {'flush (ms)':>11} {'rewrite (ms)':>13} {'ratio':>7}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "c.npz"
            cache = synthetic_cache(n)
            save_cache(cache, path)
            writer = SegmentWriter(path, cache.meta)
            flush_ms = []
            for r in range(args.repeat):
                shas = [f"f{r:03d}{i:060x}" for i in range(50)]
                for sha in shas:
                    writer.add("files", sha256=sha, path=f"/new/{sha}.jpg", width=4000,
                               height=3000, status="face", error="")
                    writer.add("paths", path=f"/new/{sha}.jpg", sha256=sha, size=1,
                               mtime_ns=1, error="")
                for row in face_rows(shas, rng):
                    writer.add("faces", **row)
                t = time.perf_counter()
                writer.flush()
                flush_ms.append((time.perf_counter() - t) * 1000)
            rewrite_ms = []
            for _ in range(max(2, args.repeat // 3)):
                t = time.perf_counter()
                save_cache(cache, path)
                rewrite_ms.append((time.perf_counter() - t) * 1000)
            f, w = statistics.median(flush_ms), statistics.median(rewrite_ms)
            print(f"{n:>8} {f:>11.1f} {w:>13.1f} {w / f:>6.0f}x")


if __name__ == "__main__":
    main()
