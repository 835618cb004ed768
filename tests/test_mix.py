"""Where a mix is likely (issue 23): every swap-ready faceset carries its cohesion figure
(manifest ``cohesion``), the review page's suggestions list the facesets likely to hold two
people, most likely first, and the overview pages flag their cards. A real library of the
test photos (offline pack) with two people deliberately exported as one faceset."""
from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import (FACES, HAVE_SHARED, LOW_GATES, NO_SHARED, PACK, ROOT, TEST_THRESHOLD, run_cli,
                      wait_for_page)

sys.path.insert(0, str(ROOT))
from facesets.formats.manifest import (SWAP_FACESET_MANIFEST, ManifestError,  # noqa: E402
                                       load_manifest)


def _faceset(tmp_path: Path, cohesion) -> Path:
    body = {"format": SWAP_FACESET_MANIFEST, "version": 1, "name": "faceset_000", "top_n": 3,
            "faces": [], "dropped": [], "summary": {}}
    if cohesion is not None:
        body["cohesion"] = cohesion
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(body))
    return path


GOOD = {"version": 1, "split": 0.81, "faces": 12, "threshold": 0.79, "likely_mixed": True}


@pytest.mark.unit
@pytest.mark.parametrize("change, field", [
    ({"version": 2}, "cohesion.version"),
    ({"split": 2.5}, "cohesion.split"),
    ({"split": "0.8"}, "cohesion.split"),
    ({"faces": -1}, "cohesion.faces"),
    ({"threshold": 0}, "cohesion.threshold"),
    ({"likely_mixed": "yes"}, "cohesion.likely_mixed"),
])
def test_bad_cohesion_is_refused_naming_the_field(tmp_path, change, field):
    path = _faceset(tmp_path, dict(GOOD, **change))
    with pytest.raises(ManifestError, match=f"{path}: {field} "):
        load_manifest(path, SWAP_FACESET_MANIFEST)


@pytest.mark.unit
def test_a_faceset_without_cohesion_or_with_an_unknown_threshold_loads(tmp_path):
    assert "cohesion" not in load_manifest(_faceset(tmp_path, None), SWAP_FACESET_MANIFEST)
    m = load_manifest(_faceset(tmp_path, dict(GOOD, threshold=None, likely_mixed=False)),
                      SWAP_FACESET_MANIFEST)
    assert m["cohesion"]["threshold"] is None


sys.path.insert(0, str(ROOT / "bench"))
from bench_report import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from library_check import check_library, load  # noqa: E402

needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=NO_SHARED)
MIXED = "faceset_000"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Read-only: 3 facesets of 4 people; faceset_000 holds two people (refine's first two
    facesets exported as one). Also: photo path -> person."""
    root = tmp_path_factory.mktemp("mix")
    src = root / "photos"
    people = [p for p in sorted(FACES.iterdir()) if len(list(p.iterdir())) >= 10][:4]
    for person in people:
        (src / person.name).mkdir(parents=True)
        for f in sorted(person.iterdir())[:6]:
            shutil.copy2(f, src / person.name / f.name)
    cache = root / "c.npz"
    run_cli("embed", src, cache, *PACK, "--no-progress")
    run_cli("refine", cache, root / "refined", "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
            "--min-faces", "4", *LOW_GATES, "--link", "symlink")
    m = json.loads((root / "refined" / "refine_manifest.json").read_text())
    assert len(m["facesets"]) == 4, [len(f["faces"]) for f in m["facesets"]]
    a, b = m["facesets"][:2]
    m["facesets"] = [dict(a, faces=a["faces"] + b["faces"],
                          face_count=len(a["faces"]) + len(b["faces"]))] + m["facesets"][2:]
    (root / "mixed.json").write_text(json.dumps(m))
    out = root / "swap"
    run_cli("export-swap", cache, root / "mixed.json", out, "--swap-outlier-threshold",
            TEST_THRESHOLD, "--min-face-short", "20", *PACK, "--no-progress")
    person_of = {str(p): p.parent.name for p in src.rglob("*.jpg")}
    return out, person_of


@needs_shared
def test_every_faceset_carries_its_cohesion_and_only_the_mix_is_flagged(library):
    out, person_of = library
    check_library(out)
    names = [e["name"] for e in load(out / "manifest.json")["facesets"]]
    assert len(names) == 3
    for name in names:
        fm = load_manifest(out / name / "manifest.json", SWAP_FACESET_MANIFEST)
        coh = fm["cohesion"]
        assert coh["faces"] == len(fm["faces"]) and coh["threshold"] > 0
        people = {person_of[f["path"]] for f in fm["faces"]}
        assert coh["likely_mixed"] is (len(people) > 1), (name, coh, people)
    assert len({person_of[f["path"]] for f in load(out / MIXED / "manifest.json")["faces"]}) == 2


@needs_shared
def test_suggestions_list_the_mix_first_and_both_overview_pages_flag_it(library, tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from test_review import Review   # it needs ../shared when imported
    src, _ = library
    out = tmp_path / "swap"
    shutil.copytree(src, out, symlinks=True)
    # the static overview page (index.html): the flag on the card, the count in the header
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto((out / "index.html").as_uri(), wait_until="load")
        assert page.locator(f"#{MIXED} p.mix").inner_text().startswith("may hold two people")
        assert page.locator("p.mix").count() == 1
        assert "1 may hold two people" in page.locator("header .facts").inner_text()
        page.close()
        srv = Review(out)
        try:
            with urllib.request.urlopen(srv.url.replace("/?", "/api/library?"),
                                        timeout=30) as r:
                model = json.loads(r.read())
            mixed = model["suggestions"]["mixed"]
            assert [m["faceset"] for m in mixed] == [MIXED], mixed
            assert mixed[0]["split"] >= 0.95 * mixed[0]["threshold"]
            assert "far" not in model["suggestions"]
            page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            page.goto(srv.url)
            page.wait_for_selector(f"#card-{MIXED}")
            first = page.locator("#suggestions p").first.inner_text()
            assert first.startswith(f"{MIXED} (split ") and "may hold two people" in first, \
                first
            assert page.locator("section.card.mixed").count() == 1
            assert page.locator(f"#card-{MIXED}.mixed p.mix").count() == 1
            # the faceset's own view says it too; a clean one does not
            page.goto(srv.url + f"#/{MIXED}")
            page.wait_for_selector("#fs-tiles .tile")
            assert "may hold two people" in page.locator("#fs-info").inner_text()
            page.goto(srv.url + "#/faceset_001")
            wait_for_page(page, "document.getElementById('fs-name').textContent"
                                ".startsWith('faceset_001')")
            assert "may hold two people" not in page.locator("#fs-info").inner_text()
            page.close()
            # two clean facesets of two people merged by hand (consolidate's merge): the
            # merged one is measured again and listed too
            code, res = srv.post("merge", {"facesets": ["faceset_001", "faceset_002"]},
                                 srv.token)
            assert code == 200, res
            with urllib.request.urlopen(srv.url.replace("/?", "/api/library?"),
                                        timeout=30) as r:
                mixed = json.loads(r.read())["suggestions"]["mixed"]
            [merged] = [e["name"] for e in load(out / "manifest.json")["facesets"]
                        if e["name"] in ("faceset_001", "faceset_002")]
            assert sorted(m["faceset"] for m in mixed) == sorted([MIXED, merged]), mixed
            fm = load(out / merged / "manifest.json")
            assert fm["cohesion"]["faces"] == len(fm["faces"]) == 12
            check_library(out)
        finally:
            srv.close()
        browser.close()


@needs_shared
def test_the_figure_follows_the_faces_drop_one_person_and_undo(library, tmp_path):
    src, person_of = library
    out = tmp_path / "swap"
    shutil.copytree(src, out, symlinks=True)
    fm = load(out / MIXED / "manifest.json")
    people = sorted({person_of[f["path"]] for f in fm["faces"]})
    other = [f["file"] for f in fm["faces"] if person_of[f["path"]] == people[1]]
    before = fm["cohesion"]
    run_cli("drop-faces", out, MIXED, *other)
    check_library(out)
    after = load(out / MIXED / "manifest.json")["cohesion"]
    assert after["faces"] == len(fm["faces"]) - len(other)
    assert after["likely_mixed"] is False and after["split"] < before["split"], after
    assert "may hold two people" not in (out / "index.html").read_text()
    run_cli("undo", out)
    assert load(out / MIXED / "manifest.json")["cohesion"] == before
    assert "may hold two people" in (out / "index.html").read_text()
