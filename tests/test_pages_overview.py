"""The overview pages as a user sees them (index.html in headless Chromium) on a real library
made by real commands: the photos without a face shown as linked thumbnails on the raw/ and
the swap-ready overview (capped, "and N more"; one line when the cache is gone), facesets
named "faceset_NNN (label)", and previews/top_grid.jpg following drop-faces and its undo
(the grid's tiles compared with the dropped face's PNG)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import FACES, PACK, TEST_THRESHOLD, run_cli, wait_for_page

from facesets.formats import report

PEOPLE = ("Ariel_Sharon", "Colin_Powell", "Tony_Blair")
NOFACE = 3
IMPORT = ["--loose-threshold", "0.75", "--tight-threshold", TEST_THRESHOLD,
          "--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20",
          "--no-progress"]
# a grid tile is the PNG scaled to 128 px (JPEG): the same face differs by a few levels,
# another photo of the same person by tens
GRID_TILE, GRID_COLUMNS = 128, 6
SAME_FACE = 8.0


def noface_photo(path: Path, bgr: tuple[int, int, int]) -> None:
    """A photo with no face in it: a colour ramp with a bar (what the strip must show)."""
    img = np.zeros((120, 200, 3), np.uint8)
    img[:] = bgr
    img[:, :, 1] = np.linspace(0, 120, 200, dtype=np.uint8)[None, :]
    cv2.rectangle(img, (20, 40), (180, 80), (255, 255, 255), -1)
    cv2.imwrite(str(path), img)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """w/photos (sorted/<person>/ and noface/), w/c.npz, w/raw (cluster), w/lib (the
    hand-sorted folders imported: labelled facesets). Read-only: copy before changing."""
    if not FACES.is_dir():
        pytest.skip("needs ../shared")
    w = tmp_path_factory.mktemp("pages")
    for person in PEOPLE:
        (w / "photos" / "sorted" / person).mkdir(parents=True)
        for f in sorted((FACES / person).glob("*.jpg"))[:5]:
            shutil.copy2(f, w / "photos" / "sorted" / person / f.name)
    (w / "photos" / "noface").mkdir()
    for k, bgr in enumerate([(0, 0, 200), (200, 0, 0), (160, 0, 60)][:NOFACE]):
        noface_photo(w / "photos" / "noface" / f"empty_{k}.png", bgr)
    run_cli("embed", w / "photos", w / "c.npz", *PACK, "--no-progress")
    run_cli("cluster", w / "c.npz", w / "raw", "--threshold", TEST_THRESHOLD)
    run_cli("import-folders", w / "c.npz", w / "photos" / "sorted", "--into", w / "lib",
            *IMPORT)
    return w


def chromium_page(path: Path, script: str):
    """Open ``path`` in headless Chromium and return what ``script`` (a JS expression)
    evaluates to."""
    pw = pytest.importorskip("playwright.sync_api")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_report import CHROMIUM, CHROMIUM_ARGS  # noqa: PLC0415
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = b.new_page()
            page.goto(path.as_uri(), wait_until="load")
            return page.evaluate(script)
        finally:
            b.close()


# what the page shows of its strip of photos without a face: the heading, each tile's link
# (resolved by the browser), its sheet and offset, and the "and N more" text
STRIP = """() => {
  const s = document.querySelector('#_noface');
  if (!s) return null;
  return {text: s.textContent,
          tiles: [...s.querySelectorAll('figure')].map(f => ({
              href: f.querySelector('a') ? f.querySelector('a').href : null,
              src: f.querySelector('img').src,
              pos: f.querySelector('img').style.objectPosition})),
          more: (s.querySelector('.more') || {}).textContent || ''};
}"""


def tile_pixels(tile: dict) -> np.ndarray:
    """The 96 px tile a figure shows: its part of its sheet."""
    from urllib.parse import unquote, urlparse
    sheet = cv2.imread(unquote(urlparse(tile["src"]).path))
    x, y = (-int(v.strip().rstrip("px")) for v in tile["pos"].split())
    return sheet[y:y + report.TILE, x:x + report.TILE]


def href_path(href: str) -> Path:
    from urllib.parse import unquote, urlparse
    return Path(unquote(urlparse(href).path))


def check_strip(strip: dict, photos: list[Path]) -> None:
    """Each photo without a face is one tile linking that photo, and the tile shows it
    (its colour: the red, blue, purple ramps of noface_photo)."""
    assert strip is not None
    assert f"photos without a face ({len(photos)})" in strip["text"], strip["text"]
    assert len(strip["tiles"]) == len(photos) and strip["more"] == ""
    linked = [href_path(t["href"]) for t in strip["tiles"]]
    assert sorted(p.read_bytes() for p in linked) == sorted(p.read_bytes() for p in photos)
    for t, target in zip(strip["tiles"], linked):
        shown = tile_pixels(t).reshape(-1, 3).mean(axis=0)
        want = cv2.imread(str(target)).reshape(-1, 3).mean(axis=0)
        # letterboxed on the tile's grey ground: the photo's colour dominates
        assert np.argmax(shown[[0, 2]]) == np.argmax(want[[0, 2]]), (shown, want, target)


def test_raw_overview_shows_the_photos_without_a_face_linked(built, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(built / "raw", raw, symlinks=True)
    report.write_report(raw)
    strip = chromium_page(raw / "index.html", STRIP)
    placed = sorted((raw / "_noface").iterdir())
    assert len(placed) == NOFACE
    check_strip(strip, placed)
    assert all(href_path(t["href"]).parent == raw / "_noface" for t in strip["tiles"])


def test_the_strip_is_capped_with_and_n_more(built, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    shutil.copytree(built / "raw", raw, symlinks=True)
    monkeypatch.setattr(report, "NOFACE_TILES", 2)
    report.write_report(raw)
    strip = chromium_page(raw / "index.html", STRIP)
    assert len(strip["tiles"]) == 2 and strip["more"] == f"and {NOFACE - 2} more"
    assert f"photos without a face ({NOFACE})" in strip["text"]


def test_swap_ready_overview_shows_them_from_its_cache_or_says_it_is_gone(built, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib, symlinks=True)
    report.write_report(lib)
    strip = chromium_page(lib / "index.html", STRIP)
    check_strip(strip, sorted((built / "photos" / "noface").iterdir()))

    # the cache named in the top manifest is gone: one line says so, the page is written
    cache = Path(json.loads((lib / "manifest.json").read_text())["cache"])
    hidden = tmp_path / "hidden.npz"
    cache.rename(hidden)
    try:
        report.write_report(lib)
        strip = chromium_page(lib / "index.html", STRIP)
    finally:
        hidden.rename(cache)
    assert strip["tiles"] == [] and strip["text"].strip() == \
        f"photos without a face: not shown, the cache {cache} is gone"
    assert chromium_page(lib / "index.html", "document.querySelectorAll('section').length") \
        == len(json.loads((lib / "manifest.json").read_text())["facesets"]) + 1


def test_a_hostile_cache_path_shows_no_strip(built, tmp_path):
    """A top manifest naming a relative cache ("../c.npz"): no strip, nothing outside read;
    a cache that is not a string: one error line naming the file and the field."""
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib, symlinks=True)
    top = json.loads((lib / "manifest.json").read_text())
    (lib / "manifest.json").write_text(json.dumps(dict(top, cache=os.path.relpath(top["cache"],
                                                                                  lib))))
    run_cli("report", lib)
    assert chromium_page(lib / "index.html", STRIP) is None
    (lib / "manifest.json").write_text(json.dumps(dict(top, cache=7)))
    bad = run_cli("report", lib, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: {lib / 'manifest.json'}: cache is int, not a string; restore the file or "
        "re-run the step that writes it"], bad.stderr


HEADINGS = """() => Object.fromEntries([...document.querySelectorAll('section.card')]
    .filter(s => s.id.startsWith('faceset_'))
    .map(s => [s.id, [s.querySelector('h2').textContent,
                      (s.querySelector('p.map') || {}).textContent || '']]))"""


def test_cards_name_facesets_by_label_and_origin(built, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib, symlinks=True)
    report.write_report(lib)
    shown = chromium_page(lib / "index.html", HEADINGS)
    top = json.loads((lib / "manifest.json").read_text())
    labels = {e["name"]: json.loads((lib / e["manifest"]).read_text())["label"]
              for e in top["facesets"]}
    assert sorted(labels.values()) == sorted(PEOPLE)
    assert shown == {n: [f"{n} ({lab})", f"added by import-folders from {lab}"]
                     for n, lab in labels.items()}, shown
    # the operator's NAME.txt wins over the imported label
    first = sorted(labels)[0]
    (lib / first / "NAME.txt").write_text("# who\nAnna\n")
    report.write_report(lib)
    assert chromium_page(lib / "index.html", HEADINGS)[first][0] == f"{first} (Anna)"


def grid_tiles(path: Path) -> list[np.ndarray]:
    grid = cv2.imread(str(path)).astype(np.float32)
    rows, cols = grid.shape[0] // GRID_TILE, grid.shape[1] // GRID_TILE
    return [grid[r * GRID_TILE:(r + 1) * GRID_TILE, c * GRID_TILE:(c + 1) * GRID_TILE]
            for r in range(rows) for c in range(cols)]


def nearest_tile(grid: Path, png: Path) -> float:
    """The mean absolute difference between ``png`` (scaled as the grid scales it) and the
    grid's tile most like it."""
    face = cv2.resize(cv2.imread(str(png)), (GRID_TILE, GRID_TILE),
                      interpolation=cv2.INTER_AREA).astype(np.float32)
    return min(float(np.abs(t - face).mean()) for t in grid_tiles(grid))


def test_top_grid_follows_drop_faces_and_its_undo(built, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib, symlinks=True)
    name = json.loads((lib / "manifest.json").read_text())["facesets"][0]["name"]
    grid = lib / name / "previews" / "top_grid.jpg"
    victim = lib / name / "faces" / "000.png"
    dropped_bytes = victim.read_bytes()
    keep = lib / name / "faces" / "001.png"
    before_grid = grid.read_bytes()
    assert nearest_tile(grid, victim) < SAME_FACE

    run_cli("drop-faces", lib, name, "faces/000.png")
    parked = [p for p in (lib / name / "faces" / "_dropped").iterdir()
              if p.read_bytes() == dropped_bytes]
    assert len(parked) == 1 and not victim.exists()
    assert nearest_tile(grid, parked[0]) > 2 * SAME_FACE, "the dropped face is still shown"
    assert nearest_tile(grid, keep) < SAME_FACE, "a kept face is no longer shown"

    run_cli("undo", lib)
    assert victim.read_bytes() == dropped_bytes
    assert nearest_tile(grid, victim) < SAME_FACE
    assert grid.read_bytes() == before_grid, "undo brings the old grid back"



def test_review_page_names_by_label_and_its_drop_redraws_the_grid(built, tmp_path):
    """The review page (a real `review` server, Chromium) names facesets "faceset_NNN
    (label)" in its cards, its faceset view and its move-to list; a drop made through it and
    its undo leave previews/top_grid.jpg showing the faceset's faces."""
    pw = pytest.importorskip("playwright.sync_api")
    from test_review import CHROMIUM, CHROMIUM_ARGS, Review  # noqa: PLC0415
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib, symlinks=True)
    top = json.loads((lib / "manifest.json").read_text())
    labels = {e["name"]: json.loads((lib / e["manifest"]).read_text())["label"]
              for e in top["facesets"]}
    first, other = sorted(labels)[:2]
    grid = lib / first / "previews" / "top_grid.jpg"
    victim = lib / first / "faces" / "001.png"
    victim_bytes = victim.read_bytes()
    server = Review(lib)
    try:
        with pw.sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = b.new_page()
            page.goto(server.url, wait_until="load")
            page.wait_for_selector(f"#card-{first}")
            heads = {n: page.locator(f"#card-{n} h2").text_content() for n in labels}
            assert heads == {n: f"{n} ({lab})" for n, lab in labels.items()}, heads
            page.goto(server.url + f"#/{first}")
            wait_for_page(page, "document.querySelector('#fs-name').textContent.length > 0")
            assert page.locator("#fs-name").text_content() == f"{first} ({labels[first]})"
            options = page.locator("#move-target option").all_text_contents()
            assert f"{other} ({labels[other]})" in options, options
            b.close()
        assert nearest_tile(grid, victim) < SAME_FACE
        code, res = server.post("drop", {"faceset": first, "files": ["faces/001.png"]},
                                token=server.token)
        assert code == 200 and res["ok"], res
        assert not victim.exists()
        assert nearest_tile(grid, victim_parked(lib / first, victim_bytes)) > 2 * SAME_FACE
        code, res = server.post("undo", {"run": res["run"]}, token=server.token)
        assert code == 200, res
        assert victim.read_bytes() == victim_bytes and nearest_tile(grid, victim) < SAME_FACE
    finally:
        server.close()


def victim_parked(fdir: Path, data: bytes) -> Path:
    """Where a step parked the PNG of these bytes (faces/_dropped/)."""
    found = [p for p in (fdir / "faces" / "_dropped").iterdir() if p.read_bytes() == data]
    assert len(found) == 1
    return found[0]


def test_run_closes_by_pointing_at_the_overview_page_and_review(built, tmp_path):
    """`run`'s closing "next:" lines name the swap-ready folder's index.html (a page that
    exists) and `review` on that folder."""
    from facesets.commands.run import result_table
    from facesets.runtime.pipeline import RunLayout
    out = tmp_path / "out"
    shutil.copytree(built / "lib", out / "swap_ready", symlinks=True)
    report.write_report(out / "swap_ready")
    lines = result_table(RunLayout(src=built / "photos", out=out, cache=built / "c.npz"))
    nxt = lines[lines.index("next:") + 1:]
    page = out / "swap_ready" / "index.html"
    assert f"open {page} in a browser" in nxt[0] and page.is_file(), nxt
    assert f"sort_faces.py library review {out / 'swap_ready'}" in nxt[1], nxt


# the review page's strip (#noface): heading, each tile's link, its sheet and offset, "more"
REVIEW_STRIP = """() => {
  const s = document.querySelector('#noface');
  return {hidden: s.hidden, text: s.textContent,
          head: (s.querySelector('h2') || {}).textContent || '',
          tiles: [...s.querySelectorAll('figure')].map(f => ({
              href: f.querySelector('a') ? f.querySelector('a').href : null,
              src: f.querySelector('img').src,
              pos: f.querySelector('img').style.objectPosition,
              label: f.querySelector('.cap').textContent})),
          more: (s.querySelector('.more') || {}).textContent || ''};
}"""


def http_get(url: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of one GET."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def review_strip(url: str, shot_to: Path | None = None) -> dict:
    """The review page of a running server (headless Chromium): its #noface strip, once
    the library is drawn and every image of the strip has loaded."""
    pw = pytest.importorskip("playwright.sync_api")
    from test_review import CHROMIUM, CHROMIUM_ARGS, shot  # noqa: PLC0415
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = b.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url, wait_until="load")
            page.wait_for_selector("section.card[id^=card-]")
            wait_for_page(page, "[...document.querySelectorAll('#noface img')].every("
                                "i => i.complete && i.naturalWidth > 0)")
            strip = page.evaluate(REVIEW_STRIP)
            strip["facts"] = page.locator("#facts span").all_text_contents()
            strip["cards"] = page.locator("section.card").count()
            if shot_to:
                shot(page, shot_to)
            return strip
        finally:
            b.close()


def sheet_tile(sheet: bytes, pos: str) -> np.ndarray:
    x, y = (-int(v.strip().rstrip("px")) for v in pos.split())
    img = cv2.imdecode(np.frombuffer(sheet, np.uint8), cv2.IMREAD_COLOR)
    return img[y:y + report.TILE, x:x + report.TILE]


def test_review_page_shows_the_photos_without_a_face_served_by_hash_only(built, tmp_path):
    """`library review`: the strip at the end of the library view, each tile (its part of
    a sheet) linking the photo through the server; the server's /noface/<sha256> serves
    only the cache's no-face photos, while their bytes still hash so, and only with the
    token."""
    from test_review import Review  # noqa: PLC0415

    from facesets.formats.cache import STATUS_FACE, load_cache  # noqa: PLC0415
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib, symlinks=True)
    photos = sorted((built / "photos" / "noface").iterdir())
    server = Review(lib)
    try:
        strip = review_strip(server.url, tmp_path / "review_noface.png")
        assert not strip["hidden"] and strip["head"] == f"photos without a face ({NOFACE})"
        assert len(strip["tiles"]) == NOFACE and strip["more"] == ""
        assert strip["cards"] == len(json.loads((lib / "manifest.json").read_text())["facesets"])
        assert sorted(t["label"] for t in strip["tiles"]) == [p.name for p in photos]
        base = f"http://127.0.0.1:{server.port}"
        for t in strip["tiles"]:
            code, data, ctype = http_get(t["href"])
            assert code == 200 and ctype == "image/png", (t, code, data[:200])
            assert data == (built / "photos" / "noface" / t["label"]).read_bytes()
            code, sheet, _ = http_get(t["src"])
            shown = sheet_tile(sheet, t["pos"]).reshape(-1, 3).mean(axis=0)
            want = cv2.imdecode(np.frombuffer(data, np.uint8),
                                cv2.IMREAD_COLOR).reshape(-1, 3).mean(axis=0)
            assert np.argmax(shown[[0, 2]]) == np.argmax(want[[0, 2]]), (shown, want, t)
            # the token is needed; the link names a hash, nothing else
            assert http_get(t["href"].split("?")[0])[0] == 403
        token = f"?token={server.token}"
        cache = load_cache(json.loads((lib / "manifest.json").read_text())["cache"])
        files = cache.files
        face_sha = next(h for h, st in zip(files["sha256"].tolist(), files["status"].tolist())
                        if st == STATUS_FACE)
        noface_sha = strip["tiles"][0]["href"].split("/noface/")[1].split("?")[0]
        for bad in [face_sha, noface_sha.upper(), noface_sha[:-1], "..%2f..%2fetc%2fpasswd",
                    "%2e%2e/%2e%2e/etc/passwd", noface_sha + "/x", ""]:
            code, body, _ = http_get(f"{base}/noface/{bad}{token}")
            assert code == 404, (bad, code, body[:200])
        # the photo replaced since the cache hashed it (other bytes, a symlink to another
        # file): not served; back as it was: served again
        victim = built / "photos" / "noface" / strip["tiles"][0]["label"]
        kept = tmp_path / "kept.png"
        shutil.copy2(victim, kept)
        try:
            for replace in (lambda: victim.write_bytes(kept.read_bytes() + b"x"),
                            lambda: victim.symlink_to(photos[-1] if photos[-1] != victim
                                                      else photos[0])):
                victim.unlink()
                replace()
                assert http_get(strip["tiles"][0]["href"])[0] == 404
        finally:
            victim.unlink()
            shutil.copy2(kept, victim)
        assert http_get(strip["tiles"][0]["href"])[:2] == (200, kept.read_bytes())
    finally:
        server.close()


def test_review_page_says_when_the_cache_is_gone_and_counts_masked_and_thin(built, tmp_path):
    """The cache the library names is gone: one line where the strip was. A library whose
    top manifest records facesets moved to _masked/ and _thin/ counts them in its facts."""
    from test_review import Review  # noqa: PLC0415
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib, symlinks=True)
    top = json.loads((lib / "manifest.json").read_text())
    moved = sorted(e["name"] for e in top["facesets"])[:2]
    for name, where, section in ((moved[0], "_masked", "masked"),
                                 (moved[1], "_thin", "thin_eras")):
        (lib / where).mkdir()
        (lib / name).rename(lib / where / name)
        top[section] = [{"name": name, "to": where, "moved_to": f"{where}/{name}"}]
    top["facesets"] = [e for e in top["facesets"] if e["name"] not in moved]
    (lib / "manifest.json").write_text(json.dumps(top))
    cache = Path(top["cache"])
    hidden = tmp_path / "hidden.npz"
    cache.rename(hidden)
    try:
        server = Review(lib)
        try:
            strip = review_strip(server.url, tmp_path / "review_noface_gone.png")
        finally:
            server.close()
    finally:
        hidden.rename(cache)
    assert not strip["hidden"] and strip["tiles"] == [] and strip["head"] == ""
    assert strip["text"] == f"photos without a face: not shown, the cache {cache} is gone"
    assert "masked: 1" in strip["facts"] and "thin: 1" in strip["facts"], strip["facts"]
    assert f"{len(top['facesets'])} facesets" in strip["facts"], strip["facts"]
    assert strip["cards"] == len(top["facesets"])


def test_review_page_caps_the_strip_with_and_n_more(built, tmp_path, monkeypatch):
    """The server in this process (its cap lowered): the cap's tiles, then "and N more"."""
    import threading  # noqa: PLC0415

    from facesets.commands.common import swap_ready_meta  # noqa: PLC0415
    from facesets.review.server import serve  # noqa: PLC0415
    lib = tmp_path / "lib"
    shutil.copytree(built / "lib", lib, symlinks=True)
    monkeypatch.setattr(report, "NOFACE_TILES", 2)
    httpd, url = serve(lib, swap_ready_meta(lib), log=lambda *a, **k: None)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        strip = review_strip(url)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert strip["head"] == f"photos without a face ({NOFACE})"
    assert len(strip["tiles"]) == 2 and strip["more"] == f"and {NOFACE - 2} more"
