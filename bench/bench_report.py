"""How fast a big report opens: index.html of N facesets x F faces (synthetic cards and
thumbnail sheets, the page exactly as formats/report.py renders it), opened from file:// in
Chromium (headless, /usr/bin/chromium through Playwright); prints the time to the load
event and to the first contentful paint.

    python3 bench/bench_report.py [--facesets 300] [--faces 100] [--top-n 30]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facesets.formats.report import (COLUMNS, SHEET_TILES, THUMBS_DIR, TILE, Tile,  # noqa: E402
                                     render_html)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def synthetic_report(out: Path, facesets: int, faces: int, top_n: int) -> Path:
    """OUT/index.html + one sheet per faceset, as write_report would lay them out."""
    rng = np.random.default_rng(0)
    (out / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    cards = []
    for i in range(facesets):
        n = min(faces, SHEET_TILES)
        rows = -(-n // COLUMNS)
        sheet = rng.integers(0, 255, (rows * TILE, COLUMNS * TILE, 3), dtype=np.uint8)
        name = f"{i:016x}.jpg"
        cv2.imwrite(str(out / THUMBS_DIR / name), cv2.GaussianBlur(sheet, (9, 9), 3))
        tiles = []
        for k in range(faces):
            t = Tile(key=f"k{i}_{k}", label=f"#{k + 1} {0.9 - k / 300:.2f}", rank=k)
            r, c = divmod(k % SHEET_TILES, COLUMNS)
            t.sheet, t.x, t.y = name, c * TILE, r * TILE
            tiles.append(t)
        fs = f"faceset_{i:03d}"
        cards.append({"name": fs, "title": f"Person {i}", "kept": faces,
                      "dropped": {"outlier": 2, "small": 1}, "mapping": f"from refine {fs}",
                      "links": [("folder", f"{fs}/"), (f"{fs}_top{top_n}.fsz",
                                                      f"{fs}/{fs}_top{top_n}.fsz")],
                      "tiles": tiles, "shown": min(top_n, faces), "top_n": top_n})
    head = {"title": "swap-ready facesets", "facts": [f"{facesets} facesets"]}
    dest = out / "index.html"
    dest.write_text(render_html("face-sets/swap", cards, head, out.name), encoding="utf-8")
    return dest


def open_time(page_path: Path, browser=None) -> dict:
    """Seconds to the load event and to the first contentful paint, from file:// (in
    ``browser``, a Playwright Chromium, or one launched for this)."""
    if browser is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                return open_time(page_path, b)
            finally:
                b.close()
    if True:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto("about:blank")
        t0 = time.perf_counter()
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        wall = time.perf_counter() - t0
        nav = page.evaluate("""() => {
            const n = performance.getEntriesByType('navigation')[0];
            const p = performance.getEntriesByName('first-contentful-paint')[0];
            return {load: n.loadEventEnd / 1000, fcp: p ? p.startTime / 1000 : null,
                    cards: document.querySelectorAll('section.card').length,
                    bytes: document.documentElement.outerHTML.length};
        }""")
        page.close()
    return dict(nav, wall=wall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facesets", type=int, default=300)
    ap.add_argument("--faces", type=int, default=100)
    ap.add_argument("--top-n", type=int, default=30)
    ap.add_argument("--out", default="/tmp/bench_report")
    a = ap.parse_args()
    page = synthetic_report(Path(a.out), a.facesets, a.faces, a.top_n)
    r = open_time(page)
    print(f"{a.facesets} facesets x {a.faces} faces (top {a.top_n} shown): "
          f"{page.stat().st_size / 1e6:.2f} MB of HTML, {r['cards']} cards; load event "
          f"{r['load']:.2f} s, first contentful paint "
          f"{r['fcp'] if r['fcp'] is None else round(r['fcp'], 2)} s, goto wall {r['wall']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
