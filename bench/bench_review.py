"""How the review page copes with a big library: a synthetic swap-ready folder of N facesets
x F faces (valid manifests; no face PNGs, so the thumbnail sheets are blank tiles: the page,
the JSON and the sheets are what a real library of that size serves), served by `review`'s
server on 127.0.0.1 and driven in Chromium (/usr/bin/chromium through Playwright).

Prints: server start (report + sheets written), the library JSON size, time to the overview
with every card, time to open a faceset page with all its faces, time to the next card (j).

    python3 bench/bench_review.py [--facesets 300] [--faces 100]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_report import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from facesets.formats.manifest import (SWAP_FACESET_MANIFEST, new_manifest,  # noqa: E402
                                       write_manifest)
from facesets.formats.swapset import (bundles_entry, faceset_listing, faceset_manifest,  # noqa: E402
                                      swap_manifest)


def synthetic_library(out: Path, facesets: int, faces: int, dim: int = 512) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    head = new_manifest(SWAP_FACESET_MANIFEST, "/nonexistent.npz", {"model": "synthetic"},
                        {"outlier_threshold": 0.45})
    listing = []
    for i in range(facesets):
        name = f"faceset_{i:03d}"
        c = rng.normal(size=dim)
        entries = [{"rank": k, "file": f"faces/{k:03d}.png", "key": f"{i:04x}{k:04x}:0",
                    "score": round(0.9 - k / 400, 4), "distance": round(0.1 + k / 300, 4)}
                   for k in range(faces)]
        m = faceset_manifest(head, name, name, "bench", 30, c / np.linalg.norm(c), entries, [],
                             faces, [])
        m["bundles"] = bundles_entry(name, 30, faces)
        (out / name / "faces").mkdir(parents=True)
        write_manifest(out / name / "manifest.json", m)
        listing.append(faceset_listing(m))
    top = swap_manifest(dict(head), "bench", "/nonexistent.json", listing, {"to": {}, "new": []},
                        {}, facesets * faces, {}, 0, 0, 0.0)
    write_manifest(out / "manifest.json", top)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facesets", type=int, default=300)
    ap.add_argument("--faces", type=int, default=100)
    ap.add_argument("--out", default="/tmp/bench_review")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from facesets.review.server import serve

    lib = synthetic_library(Path(a.out), a.facesets, a.faces)
    t0 = time.perf_counter()
    httpd, url = serve(lib, {"model": "synthetic"}, 0, 0.3, 0.2, log=lambda m: None)
    start = time.perf_counter() - t0
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function(f"document.querySelectorAll('section.card').length === "
                               f"{a.facesets}", timeout=60000)
        overview = time.perf_counter() - t0
        size = page.evaluate("JSON.stringify(lib).length")
        t0 = time.perf_counter()
        page.evaluate("location.hash = '#/faceset_150'")
        page.wait_for_function(f"document.querySelectorAll('#fs-tiles .tile').length === "
                               f"{a.faces}")
        faceset = time.perf_counter() - t0
        page.evaluate("location.hash = ''")
        page.wait_for_selector("#card-faceset_000.cur")
        t0 = time.perf_counter()
        page.keyboard.press("j")
        page.wait_for_selector("#card-faceset_001.cur")
        step = time.perf_counter() - t0
        b.close()
    httpd.shutdown()
    httpd.server_close()
    t0 = time.perf_counter()
    again, _ = serve(lib, {"model": "synthetic"}, 0, 0.3, 0.2, log=lambda m: None)
    restart = time.perf_counter() - t0
    again.server_close()
    print(f"{a.facesets} facesets x {a.faces} faces: server start (report + sheets) "
          f"{start:.2f} s, again with the sheets there {restart:.2f} s; library JSON {size / 1e6:.2f} MB; overview with every card "
          f"{overview:.2f} s; a faceset page with all its faces {faceset:.2f} s; next card (j) "
          f"{step * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
