"""Benchmark: `immich stage` rate with 1 worker vs 8 workers against a server with latency.

    python3 bench/bench_immich.py [--assets 2000] [--latency-ms 20] [--workers 1 8]

A fake Immich (tests/immich_server.py, stdlib http.server on 127.0.0.1) serves a library of
small generated JPEGs, each with one face big enough to be staged, and sleeps
``--latency-ms`` in every request. Each run stages the whole library into a fresh folder
(faces -> filter -> original download -> sha256 -> move, state line per asset) and prints
assets/s; the last line gives the speed-up of the largest worker count over 1 worker.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from immich_server import KEY, FakeAsset, FakeImmich, small_jpeg  # noqa: E402

from facesets.sources.immich import ImmichClient  # noqa: E402
from facesets.steps.immich_stage import stage_immich  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    t0 = time.monotonic()
    lib = [FakeAsset(f"bench-{i:05d}", f"/library/{i // 500:02d}/IMG_{i:05d}.jpg",
                     small_jpeg(i), 960, 720, [(300.0, 200.0, 500.0, 420.0)])
           for i in range(args.assets)]
    print(f"library: {len(lib)} assets, {sum(len(a.data) for a in lib) / 1e6:.1f} MB "
          f"(made in {time.monotonic() - t0:.1f} s); latency {args.latency_ms:g} ms/request")
    fake = FakeImmich(lib, latency_s=args.latency_ms / 1000.0).start()
    rates = {}
    try:
        for workers in args.workers:
            tmp = Path(tempfile.mkdtemp(prefix="bench-immich-"))
            try:
                client = ImmichClient(fake.url, KEY)
                s = stage_immich(client, "bench", str(tmp / "none.npz"), tmp / "root",
                                 workers=workers, progress=False, log=lambda m: None)
                assert s.staged == len(lib), s.line()
                rates[workers] = s.processed / s.seconds
                print(f"workers {workers}: {s.processed} assets in {s.seconds:.1f} s = "
                      f"{rates[workers]:.1f} assets/s ({s.requests} requests)")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        fake.stop()
    if 1 in rates and len(rates) > 1:
        top = max(rates)
        print(f"speed-up {top} workers vs 1: {rates[top] / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
