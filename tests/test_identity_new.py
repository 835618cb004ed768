"""Identity operations that make new facesets in a swap-ready library: import-folders (hand-
sorted folders, --route), discover (new people in a mixed folder), split (a faceset of two
people). Real photos from ../shared, the session's faces cache, real subprocesses; after
every command the agreement walk (tests/library_check.py) checks manifests, bundles and
disk; each command is undone, and killed with kill -9 at sampled commits and re-run."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import FACES, PACK, TEST_THRESHOLD, copy_cache, run_cli
from killharness import KILLED, KillHarness, Scenario, compare, state
from library_check import check_library, load

from facesets.core.newsets import ensure_library

# testpack_s has no built-in thresholds: first pass 0.75, then the test threshold (0.65)
IMPORT = ["--loose-threshold", "0.75", "--tight-threshold", TEST_THRESHOLD,
          "--route-threshold", TEST_THRESHOLD]
EXPORT = ["--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20", "--no-progress"]
DISCOVER = ["--near-threshold", TEST_THRESHOLD, "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
            "--min-short", "20", "--min-blur", "0", "--min-det-score", "0.5", "--min-faces", "4"]
# a faceset of two people: no outlier pass and no export gate keeps either out
MIX = ["--loose-threshold", "2", "--tight-threshold", "2", "--swap-outlier-threshold", "2",
       "--min-face-short", "20", "--no-progress"]


def person(face: dict) -> str:
    """Ground truth of a face entry: the LFW person its photo shows (from the file name of
    the photo in ../shared, the canonical path; a copy elsewhere is an alias). In
    mixed/group.jpg Ariel Sharon is on the left, Colin Powell on the right."""
    if face["path"].endswith("/group.jpg"):
        return "Ariel_Sharon" if face["bbox"][2] <= 250 else "Colin_Powell"
    return Path(face["path"]).stem.rsplit("_", 1)[0]


def photos(name: str, first: int, last: int) -> list[Path]:
    return sorted((FACES / name).glob("*.jpg"))[first:last]


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".runs" not in p.parts}


def copy_into(dest: Path, files: list[Path]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)


def build_inputs(w: Path, faces_cache: Path) -> None:
    """In ``w``: faces.npz (the session cache plus the folders below, embedded in one go:
    copies are aliases), and in p/: sorted/ (three hand-sorted people; Ariel's folder holds a stray
    photo of Donald Rumsfeld), mixed/group.jpg (Ariel left, Colin right, in one photo),
    more/ (Hugo Chavez, for a second import), found/ (two more photos of Ariel, ten each of
    Donald Rumsfeld and George W Bush), pair/Pair/ (five photos each of Hugo Chavez and
    Jacques Chirac)."""
    copy_cache(faces_cache, w)
    for name in ("Ariel_Sharon", "Colin_Powell", "Tony_Blair"):
        copy_into(w / "p" / "sorted" / name, photos(name, 0, 6))
    copy_into(w / "p" / "sorted" / "Ariel_Sharon", photos("Donald_Rumsfeld", 0, 1))
    (w / "p" / "mixed").mkdir()
    group = np.hstack([cv2.imread(str(photos("Ariel_Sharon", 6, 7)[0])),
                       cv2.imread(str(photos("Colin_Powell", 6, 7)[0]))])
    cv2.imwrite(str(w / "p" / "mixed" / "group.jpg"), group)
    copy_into(w / "p" / "more" / "Hugo_Chavez", photos("Hugo_Chavez", 5, 10))
    copy_into(w / "p" / "found", photos("Ariel_Sharon", 8, 10)
              + photos("Donald_Rumsfeld", 0, 10) + photos("George_W_Bush", 0, 10))
    copy_into(w / "p" / "pair" / "Pair", photos("Hugo_Chavez", 0, 5)
              + photos("Jacques_Chirac", 0, 5))
    run_cli("embed", w / "p", w / "faces.npz", *PACK, "--no-progress")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, faces_cache) -> Path:
    """Read-only: copy it (shutil.copytree) before changing it."""
    w = tmp_path_factory.mktemp("identity_new")
    build_inputs(w, faces_cache)
    return w


def fresh(inputs: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a copy of the inputs' cache, a library folder) in ``tmp_path``; the photo folders
    stay in ``inputs`` (the cache names them there)."""
    return copy_cache(inputs / "faces.npz", tmp_path), tmp_path / "lib"


def import_sorted(inputs: Path, cache: Path, lib: Path, *extra: str):
    return run_cli("import-folders", cache, inputs / "p" / "sorted", "--into", lib, *IMPORT,
                   *EXPORT, *extra)


def facesets(lib: Path) -> dict[str, dict]:
    return {e["name"]: load(lib / e["manifest"]) for e in load(lib / "manifest.json")["facesets"]}


def overview_captions_say_imported(lib: Path, sets: dict[str, dict]) -> None:
    """The overview page (index.html, in Chromium) captions an imported faceset by what
    made it, never "from refine", and names it by its label, also with NAME.txt gone."""
    import sys  # noqa: PLC0415

    from facesets.formats.report import write_report  # noqa: PLC0415
    pw = pytest.importorskip("playwright.sync_api")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_report import CHROMIUM, CHROMIUM_ARGS  # noqa: PLC0415

    def cards() -> dict[str, tuple[str, str]]:
        with pw.sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = b.new_page()
            page.goto((lib / "index.html").as_uri(), wait_until="load")
            out = {n: (page.locator(f"#{n} h2 .nm").inner_text(),
                       page.locator(f"#{n} p.map").inner_text()) for n in sets}
            b.close()
        return out

    shown = cards()
    labels = {n: m["label"] for n, m in sets.items()}
    # the heading reads "faceset_001 (Ada)"
    assert shown == {n: (f"({labels[n]})", f"added by import-folders from {labels[n]}")
                     for n in sets}, shown
    name_file = lib / "faceset_001" / "NAME.txt"
    kept = name_file.read_bytes()
    name_file.unlink()
    try:
        write_report(lib)
        assert cards()["faceset_001"][0] == f"({labels['faceset_001']})"
    finally:
        name_file.write_bytes(kept)
        write_report(lib)


def test_import_folders_hand_sorted_with_route_then_more_then_undo(inputs, tmp_path):
    cache, lib = fresh(inputs, tmp_path)
    dry = import_sorted(inputs, cache, lib, "--route", inputs / "p" / "mixed", "--dry-run")
    assert "Ariel_Sharon -> faceset_000" in dry.stdout and "nothing changed" in dry.stdout
    assert not lib.exists()

    out = import_sorted(inputs, cache, lib, "--route", inputs / "p" / "mixed")
    check_library(lib)
    sets = facesets(lib)
    assert sorted(sets) == ["faceset_000", "faceset_001", "faceset_002"]
    for name, label in zip(sorted(sets), ("Ariel_Sharon", "Colin_Powell", "Tony_Blair")):
        m = sets[name]
        assert (lib / name / "NAME.txt").read_text().splitlines()[0] == label
        assert m["bundles"]["top"] == f"{label}_top30.fsz"
        assert (lib / name / f"{label}_all.fsz").is_file()
        # one person each: the stray photo of Donald in Ariel's folder and the bystanders
        # of the LFW photos dropped out in the two passes
        assert {person(f) for f in m["faces"]} == {label}, (name, [f["path"] for f in m["faces"]])
        assert len(m["faces"]) >= 5
    overview_captions_say_imported(lib, sets)
    # the group photo fed two facesets, each with its own face (Ariel left, Colin right)
    grouped = {n: [f for f in m["faces"] if f["path"].endswith("/group.jpg")]
               for n, m in sets.items()}
    assert [len(grouped[n]) for n in sorted(grouped)] == [1, 1, 0], grouped
    assert grouped["faceset_000"][0]["bbox"][2] <= 250 < grouped["faceset_001"][0]["bbox"][0]
    top = load(lib / "manifest.json")
    rec = top["added"][0]
    assert rec["step"] == "import-folders" and rec["run"] == top["runs"][0]["id"]
    assert rec["facesets"][0]["source"]["folder"] == \
        str((inputs / "p" / "sorted" / "Ariel_Sharon").resolve())
    assert rec["facesets"][0]["source"]["routed"] == 1
    assert f"undo: `library undo {lib}" in out.stdout
    # a re-run imports nothing twice
    again = import_sorted(inputs, cache, lib, "--route", inputs / "p" / "mixed")
    assert "skipped (imported before as faceset_000)" in again.stdout
    assert "nothing changed" in again.stdout and len(load(lib / "manifest.json")["runs"]) == 1
    # export-swap into the library would replace the imported facesets: refused
    r = run_cli("export-swap", cache, lib / "manifest.json", lib, *EXPORT, *PACK, check=False)
    assert r.returncode == 2 and "a re-export would replace or remove them" in r.stderr
    assert f"undo those runs first (`library undo {lib} RUN`)" in r.stderr, r.stderr

    # a second import is numbered past the highest and leaves the others as they were
    before = tree(lib)
    run_cli("import-folders", cache, inputs / "p" / "more", "--into", lib, *IMPORT, *EXPORT)
    check_library(lib)
    after = tree(lib)
    assert {k: v for k, v in after.items() if k.startswith("faceset_00") and
            not k.startswith("faceset_003")} == {k: v for k, v in before.items()
                                                 if k.startswith("faceset_")}
    assert {person(f) for f in facesets(lib)["faceset_003"]["faces"]} == {"Hugo_Chavez"}

    # undo, twice: back to the first import, then to an empty library; nothing deleted
    added = sum(len(m["faces"]) for m in facesets(lib).values())
    run_cli("undo", lib)
    check_library(lib)
    assert {k: v for k, v in tree(lib).items() if not k.startswith("_added/")} == \
        {k: v for k, v in before.items() if k != "manifest.json"} | \
        {"manifest.json": tree(lib)["manifest.json"]}
    assert without_runs(load(lib / "manifest.json")) == without_runs(top)
    run_cli("undo", lib)
    check_library(lib)
    assert load(lib / "manifest.json")["facesets"] == []
    assert len(list((lib / "_added").glob("*/faceset_*/faces/*.png"))) == added


def without_runs(top: dict) -> dict:
    return {k: v for k, v in top.items() if k != "runs"}


def test_discover_finds_the_unknown_people_and_leaves_the_known_to_extend(inputs, tmp_path):
    cache, lib = fresh(inputs, tmp_path)
    import_sorted(inputs, cache, lib)
    before = tree(lib)
    top = load(lib / "manifest.json")
    args = ["discover", cache, inputs / "p" / "found", "--into", lib, *DISCOVER, *EXPORT]
    dry = run_cli(*args, "--dry-run")
    assert "cluster 0: 10 faces" in dry.stdout and "cluster 1: 10 faces" in dry.stdout, dry.stdout
    # the plan names the faceset by the label import-folders gave it (its NAME.txt)
    label = (lib / "faceset_000" / "NAME.txt").read_text().splitlines()[0]
    assert f"left to extend: faceset_000 ({label}) 2" in dry.stdout and tree(lib) == before

    run_cli(*args)
    check_library(lib)
    sets = facesets(lib)
    found = {frozenset(person(f) for f in sets[n]["faces"]) for n in ("faceset_003", "faceset_004")}
    assert found == {frozenset({"Donald_Rumsfeld"}), frozenset({"George_W_Bush"})}
    assert all(len(sets[n]["faces"]) >= 8 for n in ("faceset_003", "faceset_004"))
    rec = load(lib / "manifest.json")["added"][-1]
    assert rec["step"] == "discover" and rec["provenance"]["left_to_extend"] == {"faceset_000": 2}
    assert "0 new identities" in run_cli(*args).stdout   # a re-run adds nothing twice

    run_cli("undo", lib)
    check_library(lib)
    assert {k: v for k, v in tree(lib).items() if not k.startswith("_added/")} == \
        dict(before, **{"manifest.json": tree(lib)["manifest.json"]})
    assert without_runs(load(lib / "manifest.json")) == without_runs(top)


def test_split_a_faceset_of_two_people_into_one_person_each_then_undo(inputs, tmp_path):
    from facesets.steps.split import apply_split, plan_split

    cache, lib = fresh(inputs, tmp_path)
    run_cli("import-folders", cache, inputs / "p" / "pair", "--into", lib, *MIX)
    mixed = load(lib / "faceset_000" / "manifest.json")
    top = load(lib / "manifest.json")
    assert {person(f) for f in mixed["faces"]} == {"Hugo_Chavez", "Jacques_Chirac"}
    before = tree(lib)
    args = ["split", lib, "faceset_000", "--threshold", TEST_THRESHOLD]
    dry = run_cli(*args, "--dry-run")
    assert "2 parts (5, 5)" in dry.stdout and tree(lib) == before, dry.stdout

    run_cli(*args)
    check_library(lib)
    sets = facesets(lib)
    assert sorted(sets) == ["faceset_001", "faceset_002"]
    assert {frozenset(person(f) for f in m["faces"]) for m in sets.values()} == \
        {frozenset({"Hugo_Chavez"}), frozenset({"Jacques_Chirac"})}
    # the parts hold the same crops (copies, renumbered by rank), none lost or re-cropped
    old = {f["key"]: (lib / "_split" / "faceset_000" / f["file"]).read_bytes()
           for f in mixed["faces"]}
    new = {f["key"]: (lib / n / f["file"]).read_bytes() for n, m in sets.items()
           for f in m["faces"]}
    assert new == old
    archived = load(lib / "_split" / "faceset_000" / "manifest.json")
    assert archived["split_into"]["facesets"] == ["faceset_001", "faceset_002"]
    assert "split already" in run_cli(*args).stdout

    run_cli("undo", lib)
    check_library(lib)
    assert {k: v for k, v in tree(lib).items() if not k.startswith("_")} == \
        dict({k: v for k, v in before.items() if not k.startswith("_")},
             **{"manifest.json": tree(lib)["manifest.json"]})
    assert without_runs(load(lib / "manifest.json")) == without_runs(top)

    # the review page's way: a partition the user chose, by face files
    files = sorted(f["file"] for f in mixed["faces"])
    plan = plan_split(lib, "faceset_000", partition=[files[:3], files[3:5]])
    assert [len(p) for p in plan.parts] == [3, 2] and len(plan.rest) == len(files) - 5
    apply_split(plan, log=lambda m: None)
    check_library(lib)
    assert [e["name"] for e in load(lib / "manifest.json")["facesets"]] == \
        ["faceset_001", "faceset_002"]   # the undone parts are parked in _split/<tag>/
    with pytest.raises(ValueError, match="not a face of"):
        plan_split(lib, "faceset_001", partition=[["faces/999.png"]])


def _kill_and_rerun(h: KillHarness, scenario: Scenario, points) -> None:
    for k in points:
        h.reset()
        first = h.run(kill_at=k, tag=f"kill{k}")
        assert first.rc == KILLED, (k, first.tail())
        assert "history:" in run_cli("history", h.w / "lib").stdout
        again = h.run(tag=f"rerun{k}")
        assert again.rc == 0, (k, again.tail())
        check_library(h.w / "lib")
        assert compare(h.reference, state(h.w, scenario)) == [], (k, h.commits[k - 1])


# W holds the cache (faces.npz, a copy of the inputs') and the library (lib); the photo
# folders stay in the module's inputs folder, which the cache names
SCENARIOS = {
    # into a library that exists (made empty by ensure_library; its creation is one write)
    "import-folders": (lambda p, w: ensure_library(w / "lib", w / "faces.npz", {}),
                       lambda p: ["import-folders", "faces.npz", p / "sorted", "--into",
                                        "lib", "--route", p / "mixed", *IMPORT, *EXPORT]),
    "discover": (lambda p, w: import_sorted(p.parent, w / "faces.npz", w / "lib"),
                 lambda p: ["discover", "faces.npz", p / "found", "--into", "lib", *DISCOVER,
                            *EXPORT]),
    "split": (lambda p, w: run_cli("import-folders", w / "faces.npz", p / "pair", "--into",
                                   w / "lib", *MIX),
              lambda p: ["split", "lib", "faceset_000", "--threshold", TEST_THRESHOLD]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_kill_at_sampled_commits_then_a_rerun_finishes(inputs, tmp_path, name):
    setup, argv = SCENARIOS[name]

    def build(w: Path) -> None:
        copy_cache(inputs / "faces.npz", w)
        setup(inputs / "p", w)

    scenario = Scenario(name, build, lambda w: argv(inputs / "p"), caches=("faces.npz",))
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    h.run_reference()
    check_library(h.w / "lib")
    # while building the new folders (import only: the others build the same way), after
    # the first move of the run, and before its last write (the top-level manifest)
    n = len(h.commits)
    first_move = next(k for k, what in enumerate(h.commits, 1) if " -> " in what)
    _kill_and_rerun(h, scenario, sorted({1 if name == "import-folders" else first_move,
                                         first_move, n - 1}))


@pytest.mark.unit
def test_two_passes_drop_a_bystander_and_keep_the_person():
    from facesets.steps.import_folders import two_pass

    rng = np.random.default_rng(0)
    me = rng.normal(size=64)
    faces = [me + rng.normal(scale=0.3, size=64) for _ in range(6)] + [rng.normal(size=64)]
    emb = np.stack([f / np.linalg.norm(f) for f in faces]).astype(np.float32)
    first, second, centroid = two_pass(emb, 0.75, 0.45)
    assert 6 not in second and set(second) == set(range(6))
    assert float(centroid @ (me / np.linalg.norm(me))) > 0.9


@pytest.mark.unit
def test_new_facesets_are_numbered_past_every_name_in_use(tmp_path):
    from facesets.core.newsets import next_names
    from facesets.formats.swapset import bundle_stem, label_stem

    lib = tmp_path / "lib"
    assert ensure_library(lib, tmp_path / "c.npz", {"model": "buffalo_l"})
    assert not ensure_library(lib, tmp_path / "c.npz", {})   # not empty: left as it is
    assert next_names(lib, 2) == ["faceset_000", "faceset_001"]
    (lib / "faceset_004").mkdir()
    (lib / "_merged" / "faceset_007").mkdir(parents=True)
    (lib / "_split" / "faceset_002_1990-1999").mkdir(parents=True)
    assert next_names(lib, 1) == ["faceset_008"]
    (lib / "_split" / "faceset_011_2000-2004").mkdir()
    assert next_names(lib, 2) == ["faceset_012", "faceset_013"]
    # a label names the bundles when it leaves a usable stem; never a path
    assert label_stem("Ariel Sharon (2003)") == "Ariel_Sharon_2003"
    assert label_stem("../..") is None
    assert bundle_stem({"name": "faceset_001", "bundle_stem": "../evil"}) == "faceset_001"
