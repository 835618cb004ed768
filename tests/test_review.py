"""The report (index.html beside every output) and the review page, in a real Chromium
(Debian's /usr/bin/chromium driven by Playwright) on a real export of the test photos.
After every action on the page the files on disk and every manifest and bundle are checked
with test_identity_ops' walker, and every action is undone again."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import HAVE_SHARED, NO_SHARED, ROOT, TEST_THRESHOLD, run_cli, wait_for_page

if not HAVE_SHARED:    # test_identity_ops lists ../shared's photos when imported
    pytest.skip(NO_SHARED, allow_module_level=True)
from library_check import check_library, load  # noqa: E402
from test_identity_ops import build_split, tree  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_report import CHROMIUM, CHROMIUM_ARGS, open_time, synthetic_report  # noqa: E402

SHOTS = Path("/work/wt/report-shots")    # a copy of each screenshot for a person to look at
pw = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Read-only: 4 facesets of 3 people (faceset_000 and faceset_003 are one person)."""
    return build_split(tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="module")
def browser():
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(page, dest: Path) -> None:
    page.screenshot(path=str(dest), full_page=True)
    if SHOTS.parent.is_dir():
        SHOTS.mkdir(exist_ok=True)
        shutil.copy(dest, SHOTS / dest.name)


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("href", "src", "action", "srcset") and v]


def without_volatile(t: dict) -> dict:
    return {k: v for k, v in t.items() if not k.startswith(".runs/") and k != "manifest.json"}


def test_static_report_opens_from_disk_with_no_external_url(library, browser, tmp_path):
    page_file = library / "index.html"
    html = page_file.read_text()
    parser = Links()
    parser.feed(html)
    assert parser.urls, "the report links its folders, bundles and thumbnails"
    for url in parser.urls:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", url, re.I), f"external URL {url}"
        assert (library / urllib.request.url2pathname(url.split("#")[0])).exists(), url
    assert "<script" not in html and "@import" not in html and "url(" not in html
    top = load(library / "manifest.json")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(page_file.as_uri(), wait_until="load")
    assert page.locator("section.card").count() == len(top["facesets"])
    first = load(library / "faceset_000" / "manifest.json")
    caps = page.locator("#faceset_000 figcaption").all_inner_texts()
    assert caps[0] == f"#1 {sorted(first['faces'], key=lambda f: f['rank'])[0]['score']:.2f}"
    assert len(caps) == min(first["top_n"], len(first["faces"]))
    wait_for_page(page, "[...document.images].slice(0, 6).every(i => i.complete "
                        "&& i.naturalWidth > 0)")
    shot(page, tmp_path / "report_swap.png")
    page.close()
    # refine's output has its report too: crops of the source photos
    refined = library.parent / "refined"
    assert (refined / "index.html").is_file() and list((refined / "_thumbs").glob("*.jpg"))
    page = browser.new_page()
    page.goto((refined / "index.html").as_uri(), wait_until="load")
    assert page.locator("section.card").count() == \
        len(load(refined / "refine_manifest.json")["facesets"])
    page.close()


def test_report_of_300_facesets_opens_in_under_2_s(browser, tmp_path):
    r = open_time(synthetic_report(tmp_path / "big", 300, 100, 30), browser)
    assert r["cards"] == 300
    assert r["load"] < 2.0 and r["wall"] < 2.0, r


class Review:
    """`review SWAP_READY --no-browser` as a real subprocess; its URL from its first line."""

    def __init__(self, root: Path):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "sort_faces.py"), "library", "review", str(root),
             "--no-browser", "--group-threshold", TEST_THRESHOLD, "--confident-threshold", "0.5",
             "--split-threshold", TEST_THRESHOLD],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:(\d+)/\?token=(\S+))", line)
        assert m, line + self.proc.stdout.read() if self.proc.poll() is not None else line
        self.url, self.port, self.token = m.group(1), int(m.group(2)), m.group(3)

    def post(self, action: str, body: dict, token: str | None = None,
             host: str = "127.0.0.1") -> tuple[int, dict]:
        req = urllib.request.Request(f"http://{host}:{self.port}/api/{action}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        if token:
            req.add_header("X-Review-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def outside_addresses() -> list[str]:
    """Addresses of this machine other than 127.0.0.1 (another loopback address, and the
    address of the default route when there is one)."""
    out = ["127.0.0.2"]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))   # UDP: picks a route, sends nothing
        ip = s.getsockname()[0]
        if not ip.startswith("127."):
            out.append(ip)
    except OSError:
        pass
    finally:
        s.close()
    return out


def wait_done(page, action: str) -> None:
    """Wait for the page to say the action is done (and shown); fail with what it says."""
    wait_for_page(page, f"/^{action} (done|failed)/.test("
                        "document.getElementById('status').textContent)", timeout_s=60)
    said = page.locator("#status").inner_text()
    assert said.startswith(f"{action} done"), said


def test_review_page_rename_drop_merge_and_undo_each(library, browser, tmp_path):
    out = tmp_path / "swap"
    shutil.copytree(library, out)
    original = tree(out)
    srv = Review(out)
    try:
        # refused: no token, a wrong token, another Host, another address
        code, body = srv.post("rename", {"faceset": "faceset_001", "name": "X"})
        assert code == 403 and "token" in body["error"]
        assert srv.post("rename", {"faceset": "faceset_001", "name": "X"}, "wrong")[0] == 403
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/library")
        assert e.value.code == 403
        req = urllib.request.Request(srv.url.replace("/?", "/api/library?"),
                                     headers={"Host": f"evil.example:{srv.port}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 421
        for addr in outside_addresses():
            with pytest.raises(OSError):
                socket.create_connection((addr, srv.port), timeout=2).close()
        # the browser's unasked /favicon.ico: an empty answer, not a 403, with no token
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/favicon.ico") as r:
            assert r.status == 204 and r.read() == b""
        # the merge preview is data: it needs the token like the rest
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/merge-preview"
                                   "?faceset=faceset_000&faceset=faceset_003")
        assert e.value.code == 403
        assert tree(out) == original, "refused requests change nothing"

        # the page's CSP allows no eval; Playwright's waits need it (the test's own code)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        page.goto(srv.url)
        page.wait_for_selector("#card-faceset_003")
        assert page.locator("section.card").count() == 4
        sug = page.locator("#suggestions").inner_text()
        assert "faceset_000 + faceset_003" in sug, sug
        shot(page, tmp_path / "review_overview.png")

        # rename (keyboard: r focuses the name field, Enter renames)
        page.goto(srv.url + "#/faceset_001")
        page.wait_for_selector("#fs-tiles .tile")
        page.keyboard.press("r")
        page.keyboard.type("Alice Example")
        page.keyboard.press("Enter")
        wait_done(page, "rename")
        assert (out / "faceset_001" / "NAME.txt").read_text() == "Alice Example\n"
        assert "Alice Example" in (out / "index.html").read_text()
        check_library(out)

        # drop two faces (click to select, d drops)
        before_drop = tree(out)
        m = load(out / "faceset_001" / "manifest.json")
        tiles = page.locator("#fs-tiles .tile")
        n = tiles.count()
        assert n == len(m["faces"])
        tiles.nth(0).click()
        tiles.nth(2).click()
        shot(page, tmp_path / "review_faceset.png")
        page.keyboard.press("d")
        wait_done(page, "drop")
        after = load(out / "faceset_001" / "manifest.json")
        assert len(after["faces"]) == n - 2
        moved = [d["moved_to"] for d in after["dropped"] if d["reason"] == "review"]
        assert len(moved) == 2 and all((out / "faceset_001" / p).is_file() for p in moved)
        check_library(out)
        assert page.locator("#fs-tiles .tile").count() == n - 2
        # what was done is said at once, with its own undo button
        said = page.locator("#status").inner_text()
        assert "2 faces dropped from faceset_001" in said, said
        # history: one row per run, newest first, in words (no raw JSON)
        rows = page.locator("#fs-history tr")
        assert rows.count() == 2   # drop, rename
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(2)] == \
            ["drop-faces", "rename"]
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d", rows.nth(0).locator("td").nth(1).inner_text())
        assert "{" not in page.locator("#fs-history").inner_text()
        assert rows.nth(0).locator("td").nth(3).inner_text().startswith("kept")

        # undo the drop (the status line's undo), then the rename (its history button)
        page.locator("#status-undo").click()
        wait_done(page, "undo")
        rows = page.locator("#fs-history tr")
        assert rows.count() == 3 and rows.nth(1).locator("td").nth(3).inner_text() \
            .startswith("undone by")
        assert without_volatile(tree(out)) == without_volatile(before_drop)
        check_library(out)
        page.locator("#fs-history button").first.click()
        wait_done(page, "undo")
        assert without_volatile(tree(out)) == without_volatile(original)
        check_library(out)

        # merge two facesets: select both on the overview, m merges
        page.goto(srv.url + "#")
        page.wait_for_selector("#card-faceset_003")
        page.locator("#card-faceset_000 input[type=checkbox]").check()
        page.locator("#card-faceset_003 input[type=checkbox]").check()
        before_merge = tree(out)
        # m asks first: both facesets with faces and their similarity; Esc changes nothing
        page.keyboard.press("m")
        page.wait_for_selector("#confirm[open] .preview .tile")
        text = page.locator("#confirm").inner_text()
        assert "faceset_000" in text and "faceset_003" in text, text
        assert page.locator("#confirm .preview").count() == 2
        preview = page.evaluate("fetch('/api/merge-preview?token=' + TOKEN + "
                                "'&faceset=faceset_000&faceset=faceset_003').then(r => r.json())")
        assert f"similarity {preview['similarity']}" in text
        assert not preview["likely_different"] and "likely different" not in text
        shot(page, tmp_path / "review_merge_confirm.png")
        page.keyboard.press("Escape")
        page.wait_for_selector("#confirm", state="hidden")
        assert tree(out) == before_merge, "a cancelled merge changes nothing"
        # two different people: the dialog says so when their distance is over the split
        # threshold
        page.locator("#card-faceset_003 input[type=checkbox]").uncheck()
        page.locator("#card-faceset_001 input[type=checkbox]").check()
        page.keyboard.press("m")
        page.wait_for_selector("#confirm[open] .preview .tile")
        other = page.evaluate("fetch('/api/merge-preview?token=' + TOKEN + "
                              "'&faceset=faceset_000&faceset=faceset_001').then(r => r.json())")
        assert other["split_threshold"] is not None
        assert other["likely_different"] == (other["distance"] > other["split_threshold"])
        assert other["likely_different"], (other, preview)
        assert "likely different people" in page.locator("#confirm").inner_text()
        page.keyboard.press("n")
        page.wait_for_selector("#confirm", state="hidden")
        assert tree(out) == before_merge
        page.locator("#card-faceset_001 input[type=checkbox]").uncheck()
        page.locator("#card-faceset_003 input[type=checkbox]").check()
        page.keyboard.press("m")
        page.wait_for_selector("#confirm[open] .preview .tile")
        page.keyboard.press("Enter")
        wait_done(page, "merge")
        top = load(out / "manifest.json")
        assert [e["name"] for e in top["facesets"]] == ["faceset_000", "faceset_001",
                                                        "faceset_002"]
        assert (out / "_merged" / "faceset_003" / "manifest.json").is_file()
        surv = load(out / "faceset_000" / "manifest.json")
        assert len(surv["faces"]) == len(load(library / "faceset_000" / "manifest.json")["faces"]) \
            + len(load(library / "faceset_003" / "manifest.json")["faces"])
        check_library(out)
        assert page.locator("section.card").count() == 3
        page.keyboard.press("u")
        wait_done(page, "undo")
        said = page.locator("#status").inner_text()
        assert re.search(r"run \S+ \(consolidate of faceset_000, faceset_003\) undone", said), said
        assert without_volatile(tree(out)) == without_volatile(original)
        check_library(out)
        assert page.locator("section.card").count() == 4
        # the overview's history: every run, newest first, the undone ones marked
        runs_now = load(out / "manifest.json")["runs"]
        rows = page.locator("#all-history tr")
        assert rows.count() == len(runs_now)
        assert [rows.nth(i).get_attribute("data-run") for i in range(rows.count())] == \
            [r["id"] for r in reversed(runs_now)]
        assert page.locator("#all-history tr.undone").count() == \
            sum(1 for r in runs_now if r.get("undone_by")) == 3   # rename, drop, merge

        # quarantine asks first (n cancels, changes nothing; Enter confirms), then the
        # status line's undo brings the faceset back
        page.goto(srv.url + "#/faceset_002")
        page.wait_for_selector("#fs-tiles .tile")
        before_q = tree(out)
        page.keyboard.press("q")
        page.wait_for_selector("#confirm[open]")
        assert "Quarantine faceset_002?" in page.locator("#confirm").inner_text()
        page.keyboard.press("n")
        page.wait_for_selector("#confirm", state="hidden")
        assert tree(out) == before_q
        page.keyboard.press("q")
        page.wait_for_selector("#confirm[open]")
        page.keyboard.press("Enter")
        wait_done(page, "quarantine")
        assert (out / "_quarantine").is_dir() and not (out / "faceset_002").exists()
        assert "faceset_002 quarantined" in page.locator("#status").inner_text()
        page.locator("#status-undo").click()
        wait_done(page, "undo")
        assert without_volatile(tree(out)) == without_volatile(original)
        check_library(out)

        # split: the selected faces become one new faceset, the others another
        assert page.evaluate("lib.split")
        page.goto(srv.url + "#/faceset_001")
        page.wait_for_selector("#fs-tiles .tile")
        m1 = load(out / "faceset_001" / "manifest.json")
        page.locator("#fs-tiles .tile").nth(0).click()
        page.locator("#fs-tiles .tile").nth(1).click()
        page.keyboard.press("s")
        wait_done(page, "split")
        top = load(out / "manifest.json")
        names = [e["name"] for e in top["facesets"]]
        assert "faceset_001" not in names and len(names) == 5
        new = [n for n in names if n not in {f"faceset_{i:03d}" for i in range(4)}]
        assert new == ["faceset_004", "faceset_005"], names
        parts = [load(out / n / "manifest.json") for n in new]
        assert sorted(len(p["faces"]) for p in parts) == [2, len(m1["faces"]) - 2]
        assert {f["key"] for p in parts for f in p["faces"]} == {f["key"] for f in m1["faces"]}
        check_library(out)
        page.goto(srv.url + "#")
        page.wait_for_selector("section.card")
        assert page.locator("section.card").count() == 5
        page.keyboard.press("u")
        wait_done(page, "undo")
        assert [e["name"] for e in load(out / "manifest.json")["facesets"]] == \
            [f"faceset_{i:03d}" for i in range(4)]
        assert load(out / "faceset_001" / "manifest.json") == m1
        check_library(out)
        page.close()
    finally:
        srv.close()
    hist = run_cli("history", out).stdout
    assert hist.count("undone by") == 5, hist
    for step in ("rename", "drop-faces", "consolidate", "quarantine", "split"):
        assert step in hist


def test_cli_move_face_and_quarantine_are_undoable(library, tmp_path):
    out = tmp_path / "swap"
    shutil.copytree(library, out)
    original = tree(out)
    src = load(out / "faceset_003" / "manifest.json")
    face = sorted(src["faces"], key=lambda f: f["rank"])[0]
    run_cli("move-face", out, "faceset_003", face["file"], "--into", "faceset_000")
    dest = load(out / "faceset_000" / "manifest.json")
    assert face["key"] in {f["key"] for f in dest["faces"]}
    assert face["key"] not in {f["key"] for f in load(out / "faceset_003" / "manifest.json")["faces"]}
    check_library(out)
    run_cli("quarantine", out, "faceset_002")
    top = load(out / "manifest.json")
    assert "faceset_002" not in [e["name"] for e in top["facesets"]]
    assert top["quarantined"][0]["moved_to"] == "_quarantine/faceset_002"
    assert (out / "_quarantine" / "faceset_002" / "faceset_002_all.fsz").is_file()
    bad = run_cli("rename", out, "faceset_002", "Nobody", check=False)
    assert bad.returncode == 2 and "no faceset faceset_002" in bad.stderr
    run_cli("undo", out)
    run_cli("undo", out)
    check_library(out)
    assert without_volatile(tree(out)) == without_volatile(original)
