"""The library remembers its settings (issue 22, items 3 and 4): export-swap records the
model, pack folder, gates and thresholds in the swap-ready top manifest (``settings``), and
every later command (embed into the cache, `run` again, import-folders, discover, eras,
immich finalize) uses them without the flags being passed again; a flag overrides them and
says so. Real photos from ../shared, the offline pack testpack_s, real subprocesses, the fake
Immich server on 127.0.0.1."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FACES, PACK, ROOT, TEST_THRESHOLD, run_cli
from library_check import check_library, load

from facesets.formats.manifest import ManifestError
from facesets.formats.swapset import SETTINGS_VERSION, read_settings, settings_section

# the reproduction of issue 22 item 4: `run` given small-face gates and (testpack_s has no
# built-in thresholds) its thresholds; nothing of it is passed again afterwards
RUN_SETTINGS = ["--threshold", TEST_THRESHOLD, "--initial-threshold", TEST_THRESHOLD,
                "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
                "--swap-outlier-threshold", TEST_THRESHOLD, "--min-short", "40",
                "--min-face-short", "40", "--min-faces", "6", "--min-blur", "0",
                "--min-det-score", "0.5", "--engine", "exact", "--no-progress"]


# ---- the section's reader -----------------------------------------------------------------
def good_section() -> dict:
    return settings_section("testpack_s", "/x/models/testpack_s",
                            {"min_short": 40, "min_faces": 6, "min_face_short": 40.0},
                            {"initial": 0.65, "swap_outlier": 0.6},
                            {"gate:min_short": "flag", "threshold:initial": "flag"})


@pytest.mark.unit
def test_settings_section_round_trips_and_types_its_gates():
    s = read_settings({"settings": json.loads(json.dumps(good_section()))}, "m.json")
    assert s["version"] == SETTINGS_VERSION and s["model"] == "testpack_s"
    assert s["gates"] == {"min_short": 40.0, "min_faces": 6, "min_face_short": 40.0}
    assert isinstance(s["gates"]["min_faces"], int)
    assert s["thresholds"] == {"initial": 0.65, "swap_outlier": 0.6}
    assert read_settings({}, "m.json") is None   # a library exported before settings


@pytest.mark.unit
@pytest.mark.parametrize("path, value, field", [
    (("version",), 99, "settings.version"),
    (("version",), "1", "settings.version"),
    (("gates", "min_short"), -1, "settings.gates.min_short"),
    (("gates", "min_short"), float("inf"), "settings.gates.min_short"),
    (("gates", "min_faces"), 6.5, "settings.gates.min_faces"),
    (("gates", "min_faces"), True, "settings.gates.min_faces"),
    (("gates", "rm_rf"), 1, "settings.gates.rm_rf"),
    (("thresholds", "initial"), 7, "settings.thresholds.initial"),
    (("thresholds", "../x"), 0.5, "settings.thresholds.../x"),
    (("model",), 3, "settings.model"),
    (("sources",), [], "settings.sources"),
])
def test_a_bad_settings_field_is_one_error_naming_file_and_field(path, value, field):
    s = good_section()
    target = s
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    with pytest.raises(ManifestError) as e:
        read_settings({"settings": s}, "lib/manifest.json")
    assert str(e.value).startswith(f"lib/manifest.json: {field} ")


# ---- the library's month, in subprocesses --------------------------------------------------
def people(dest: Path, names: list[str], first: int = 0, last: int = 10) -> None:
    for name in names:
        (dest / name).mkdir(parents=True, exist_ok=True)
        for p in sorted((FACES / name).glob("*.jpg"))[first:last]:
            shutil.copy2(p, dest / name / p.name)


def faces_of(swap: Path) -> dict[str, int]:
    return {e["name"]: e["faces"] for e in load(swap / "manifest.json")["facesets"]}


def test_commands_after_run_keep_its_settings_without_them_being_passed_again(tmp_path):
    a, sorted_, mixed = tmp_path / "A", tmp_path / "sorted", tmp_path / "mixed"
    people(a, ["Ariel_Sharon", "Colin_Powell", "Tony_Blair", "George_W_Bush"])
    people(sorted_, ["Hugo_Chavez", "Jacques_Chirac"])
    people(mixed, ["Donald_Rumsfeld", "Gerhard_Schroeder"])
    out, cache = tmp_path / "out", tmp_path / "c.npz"
    swap = out / "swap_ready"
    run_cli("run", a, out, "--cache", cache, *PACK, *RUN_SETTINGS)
    top = load(swap / "manifest.json")
    s = top["settings"]
    assert s["model"] == "testpack_s" and s["pack_dir"].endswith("models/testpack_s")
    assert s["gates"]["min_face_short"] == 40 and s["gates"]["min_faces"] == 6
    assert s["gates"]["min_short"] == 40 and s["sources"]["gate:min_face_short"] == "flag"
    assert s["thresholds"]["initial"] == float(TEST_THRESHOLD)
    assert s["sources"]["threshold:cluster"] == "flag"
    assert sorted(faces_of(swap).values()) == [10, 10, 10, 10]

    # the same run, no setting passed again: the cache's pack and the library's settings
    # resolve to the same inputs, so every step is skipped (no threshold is asked for or
    # estimated) and the library stays as it is
    again = run_cli("run", a, out, "--cache", cache, "--engine", "exact", "--no-progress")
    assert "model testpack_s" in again.stdout and "ESTIMATED" not in again.stdout
    assert "settings from the library" in again.stdout
    assert "ran nothing; skipped embed, cluster, refine, dedup, enrich, export-swap" \
        in again.stdout, again.stdout
    assert sorted(faces_of(swap).values()) == [10, 10, 10, 10]
    after = load(swap / "manifest.json")["settings"]
    assert after == s

    # more photos into the cache: the pack that made it, not the default buffalo_l
    for folder in (sorted_, mixed):
        e = run_cli("embed", folder, cache, "--no-progress")
        assert "model testpack_s" in e.stdout and "faces 20" in e.stdout, e.stdout

    # an override is said; and a folder the gates leave empty is not counted as imported
    # (these LFW faces are 60-110 px: none reaches 200)
    dry = run_cli("import-folders", cache, sorted_, "--into", swap, "--min-face-short", "200",
                  "--dry-run", "--no-progress")
    assert "override (used, and recorded): --min-face-short 200.0 (the library's 40.0)" \
        in dry.stdout
    assert "0 of 2 folders to import as new facesets (2 left with no face by export's " \
        "gates" in dry.stdout, dry.stdout
    # import-folders: no threshold (testpack_s has none built in) and no gate passed
    imp = run_cli("import-folders", cache, sorted_, "--into", swap, "--no-progress")
    assert "derived from the library's cluster threshold" in imp.stdout
    assert "min face 40.0 px" in imp.stdout
    added = {n: k for n, k in faces_of(swap).items() if n not in ("faceset_000", "faceset_001",
                                                                  "faceset_002", "faceset_003")}
    assert len(added) == 2 and all(k >= 9 for k in added.values()), imp.stdout
    check_library(swap)

    # discover: refine's gates (40 px, 6 photos) and thresholds from the library
    disc = run_cli("discover", cache, mixed, "--into", swap, "--no-progress")
    assert "at least 6 photos, faces of at least 40.0 px" in disc.stdout, disc.stdout
    assert "2 new identities" in disc.stdout, disc.stdout
    assert len(faces_of(swap)) == 8 and min(faces_of(swap).values()) >= 9
    check_library(swap)
    assert load(swap / "manifest.json")["settings"] == after   # operations keep them

    # consolidate, split, dedup-optimize: thresholds derived from the library's (testpack_s
    # has none built in, and none is passed)
    cons = run_cli("consolidate", swap, "--dry-run")
    assert "derived from the library's cluster threshold" in cons.stdout, cons.stdout

    # eras: refine's gates from the library (dry run: the probe only)
    eras = run_cli("eras", cache, "faceset_000", "--into", swap, "--dry-run", "--no-progress",
                   check=False)
    assert "min_short 40.0 (library)" in eras.stdout, eras.stdout + eras.stderr

    # an override is used, said, and recorded where the new facesets are
    sorted2 = tmp_path / "sorted2"
    people(sorted2, ["Justin_Timberlake"])
    run_cli("embed", sorted2, cache, "--no-progress")
    over = run_cli("import-folders", cache, sorted2, "--into", swap, "--min-face-short", "30",
                   "--no-progress")
    assert "override (used, and recorded): --min-face-short 30.0 (the library's 40.0)" \
        in over.stdout
    newest = max(faces_of(swap))
    assert load(swap / newest / "manifest.json")["parameters"]["min_face_short"] == 30


def test_a_damaged_settings_section_is_one_line_naming_the_field(tmp_path, faces_cache):
    swap = tmp_path / "swap"
    people(tmp_path / "sorted", ["Hugo_Chavez"], 0, 5)
    from conftest import copy_cache
    cache = copy_cache(faces_cache, tmp_path)
    run_cli("import-folders", cache, tmp_path / "sorted", "--into", swap, "--loose-threshold",
            "0.75", "--tight-threshold", TEST_THRESHOLD, "--swap-outlier-threshold",
            TEST_THRESHOLD, "--min-face-short", "20", "--no-progress")
    top = load(swap / "manifest.json")
    # a library made by import-folders records what it was made with
    assert top["settings"]["gates"]["min_face_short"] == 20
    top["settings"]["gates"]["min_face_short"] = "big"
    (swap / "manifest.json").write_text(json.dumps(top))
    r = run_cli("library", "discover", swap, cache, tmp_path / "sorted", "--dry-run",
                check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {swap / 'manifest.json'}: settings.gates.min_face_short 'big' is not a "
        "number in range (>= 0); restore the file, or re-run export-swap (it writes the "
        "settings again)"]


def test_thresholds_the_library_recorded_serve_where_nothing_else_knows_one(tmp_path,
                                                                          faces_cache):
    """refine given its thresholds, then export-swap alone: the library records them from
    the refine manifest (not chosen for it). testpack_s has no built-in thresholds and the
    cache no calibrated ones, so `library grow` uses the recorded ones (said), instead of
    asking for the flags again; a calibration saved later still wins."""
    from conftest import LOW_GATES, copy_cache

    cache, swap = copy_cache(faces_cache, tmp_path), tmp_path / "swap"
    run_cli("refine", cache, tmp_path / "refined", "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD, "--min-faces",
            "6", *LOW_GATES, "--link", "symlink")
    run_cli("export-swap", cache, tmp_path / "refined" / "refine_manifest.json", swap,
            "--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20",
            "--no-progress")
    s = load(swap / "manifest.json")["settings"]
    assert s["sources"]["threshold:initial"] == "refine manifest", s["sources"]
    grow = ["library", "grow", swap, cache, "--threshold", TEST_THRESHOLD, "--centroid-near",
            TEST_THRESHOLD, "--dry-run", "--no-progress"]
    g = run_cli(*grow)
    assert f"initial threshold {float(TEST_THRESHOLD)} (recorded)" in g.stdout, g.stdout
    assert "merge threshold 0.5 (recorded)" in g.stdout and "grow (dry run" in g.stdout

    # a calibration in the cache wins over a value the library only recorded
    from facesets.formats.cache import update_meta
    update_meta(cache, thresholds={"initial": 0.5, "merge": 0.45, "outlier": 0.6})
    g = run_cli(*grow)
    assert "(recorded)" not in g.stdout and "clustered at 0.5," in g.stdout, g.stdout


# ---- Immich: a library fed only from Immich, finalize again and again ------------------------
def test_immich_only_library_finalizes_again_and_again_in_both_modes(tmp_path):
    from immich_server import KEY, FakeAsset, FakeImmich

    def asset(n: int, p: Path) -> FakeAsset:
        return FakeAsset(f"a{n:04d}-5f1c", f"/up/{p.parent.name}/{p.name}", p.read_bytes(),
                         250, 250, [(70.0, 65.0, 180.0, 185.0)], False)

    def pics(name: str, first: int, last: int) -> list[Path]:
        return sorted((FACES / name).glob("*.jpg"))[first:last]

    names = ["Ariel_Sharon", "Colin_Powell", "Tony_Blair"]
    assets = [asset(n, p) for n, p in enumerate(
        [p for name in names for p in pics(name, 0, 7)], 1)]
    fake = FakeImmich(assets).start()
    work, out, cache = tmp_path / "work", tmp_path / "out", tmp_path / "c.npz"
    env = dict(os.environ, IMMICH_URL=fake.url, IMMICH_API_KEY=KEY, FACESETS_WORK_DIR=str(work),
               WIN_PYTHON=sys.executable, PYTHON=sys.executable)
    script = ROOT / "work" / "finalize_immich.sh"

    def finalize(*args):   # worker mode: a local Python plays the Windows GPU worker
        return subprocess.run(["bash", str(script), "alice", "--cache", str(cache), "--out",
                               str(out), *map(str, args)], env=env, cwd=ROOT,
                              capture_output=True, text=True)

    def more(n0: int, first: int, last: int) -> None:
        for n, p in enumerate([p for name in names for p in pics(name, first, last)], n0):
            fake.assets.append(asset(n, p))
        fake.by_id = {a.id: a for a in fake.assets}

    swap = out / "swap_ready"
    try:
        # no `run` output, no local photo: the first finalize makes the library with `run`
        first = finalize(*PACK, "--run-args=" + " ".join(RUN_SETTINGS), "--extend-args=--engine "
                         "exact", f"--discover-args=--near-threshold {TEST_THRESHOLD}")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "a library fed only from Immich" in first.stdout
        one = faces_of(swap)
        settings = load(swap / "manifest.json")["settings"]
        assert sorted(one.values()) == [7, 7, 7] and settings["gates"]["min_face_short"] == 40
        # twice more in worker mode (a new queue each time), with no setting passed again
        more(100, 7, 9)
        second = finalize("--extend-args=--engine exact")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "holds the results of another queue" not in second.stdout + second.stderr
        two = faces_of(swap)
        more(200, 9, 10)
        third = finalize("--extend-args=--engine exact")
        assert third.returncode == 0, third.stdout + third.stderr
        three = faces_of(swap)
        # and in-process (no worker), again with nothing new
        local_env = {k: v for k, v in env.items() if k != "WIN_PYTHON"}
        local = subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), "immich",
                                "finalize", "alice", "--cache", str(cache), "--out", str(out),
                                "--extend-args=--engine exact"], env=local_env, cwd=ROOT,
                               capture_output=True, text=True)
        assert local.returncode == 0, local.stdout + local.stderr
    finally:
        fake.stop()
    # every new photo joined its person's faceset; the library's 40 px gate kept every face
    assert sorted(two.values()) == [9, 9, 9], second.stdout
    assert sorted(three.values()) == [10, 10, 10], third.stdout
    assert faces_of(swap) == three
    assert "gates from the library" in second.stdout or "settings from the library" \
        in second.stdout
    assert load(swap / "manifest.json")["settings"]["gates"] == settings["gates"]
    check_library(swap)


# ---- the resolver's order -----------------------------------------------------------------
@pytest.mark.unit
def test_an_operations_flags_fill_the_librarys_gaps_and_never_replace_its_choices():
    from facesets.formats.swapset import with_chosen_settings

    top = {"settings": good_section()}
    top["settings"]["gates"]["min_blur"] = 10.0            # a default, not a choice
    top["settings"]["sources"]["gate:min_blur"] = "default"
    with_chosen_settings(top, {
        "gate:min_short": 20, "threshold:initial": 0.3,     # chosen already: kept
        "gate:min_blur": 0, "gate:min_faces": 4,            # a default, then a chosen one
        "threshold:cluster": 0.7, "threshold:discover_near": 0.45,   # gaps: filled
        "gate:top_n": 2.5, "threshold:merge": float("nan"), "threshold:outlier": 3.0,
        "gate:no_such_gate": 1}, "m.json")                  # not recordable: left out
    s = read_settings(json.loads(json.dumps(top, allow_nan=False)), "m.json")
    assert s["gates"] == {"min_short": 40, "min_faces": 6, "min_face_short": 40.0,
                          "min_blur": 0.0}
    assert s["thresholds"] == {"initial": 0.65, "swap_outlier": 0.6, "cluster": 0.7,
                               "discover_near": 0.45}
    assert s["sources"]["gate:min_blur"] == "flag" and "gate:min_faces" not in s["sources"]
    assert s["sources"]["threshold:cluster"] == "flag" and s["model"] == "testpack_s"
    # a library with no settings yet gets a section of what the flags chose
    bare = {"model": "testpack_s"}
    with_chosen_settings(bare, {"gate:min_faces": 4, "threshold:cluster": 0.7}, "m.json")
    s = read_settings(bare, "m.json")
    assert s["gates"] == {"min_faces": 4} and s["thresholds"] == {"cluster": 0.7}
    assert s["model"] == "testpack_s" and s["pack_dir"] is None


def test_a_library_made_by_import_keeps_the_flags_its_first_grow_was_given(tmp_path):
    """The leftover of issue 22 item 4: `library import` makes the library (it records
    export's gates), `library grow` is given refine's gates and the clustering thresholds
    (testpack_s has none built in); the next grow, given none, uses them; undoing the grow
    that recorded them takes them back out."""
    sorted_, new, later = tmp_path / "sorted", tmp_path / "new", tmp_path / "later"
    people(sorted_, ["Hugo_Chavez", "Jacques_Chirac"], 0, 6)
    people(new, ["Colin_Powell", "Tony_Blair"], 0, 6)
    people(later, ["Donald_Rumsfeld"], 0, 6)
    cache, swap = tmp_path / "c.npz", tmp_path / "swap"
    for folder in (sorted_, new):
        run_cli("embed", folder, cache, *PACK, "--no-progress")
    run_cli("library", "import", swap, cache, sorted_, "--loose-threshold", "0.75",
            "--tight-threshold", TEST_THRESHOLD, "--swap-outlier-threshold", TEST_THRESHOLD,
            "--min-face-short", "20", "--no-progress")
    before = load(swap / "manifest.json")["settings"]
    assert "min_faces" not in before["gates"] and "cluster" not in before["thresholds"]
    grow_flags = ["--threshold", TEST_THRESHOLD, "--initial-threshold", TEST_THRESHOLD,
                  "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
                  "--min-faces", "4", "--min-short", "20", "--min-blur", "0",
                  "--min-det-score", "0.5", "--min-face-short", "30", "--centroid-near", "0.4"]
    first = run_cli("library", "grow", swap, cache, *grow_flags, "--no-progress")
    assert "2 new identities" in first.stdout, first.stdout
    s = load(swap / "manifest.json")["settings"]
    assert s["gates"]["min_faces"] == 4 and s["sources"]["gate:min_faces"] == "flag"
    assert s["thresholds"]["cluster"] == float(TEST_THRESHOLD)
    assert s["thresholds"]["initial"] == float(TEST_THRESHOLD)
    assert s["thresholds"]["discover_near"] == 0.4
    # import chose 20 px: grow's 30 was used for its run, the library keeps its 20
    assert "override (used, and recorded): --min-face-short 30.0 (the library's 20.0)" \
        in first.stdout and s["gates"]["min_face_short"] == 20
    check_library(swap)

    run_cli("embed", later, cache, "--no-progress")
    dry = run_cli("library", "grow", swap, cache, "--dry-run", "--no-progress")
    assert "settings from the library" in dry.stdout and "at least 4 photos" in dry.stdout, \
        dry.stdout
    assert "1 new identities" in dry.stdout, dry.stdout

    # the grow that recorded them, undone: the library's settings are import's again, and
    # (an undone run is as if it never ran) its faces are new again
    grow_run = load(swap / "manifest.json")["runs"][-1]["id"]
    run_cli("undo", swap, grow_run)
    assert load(swap / "manifest.json")["settings"] == before
    check_library(swap)


@pytest.mark.unit
def test_resolver_order_flag_then_library_then_default():
    from argparse import Namespace

    from facesets.core.settings import LibrarySettings, gate_defaults, resolve_settings

    lib = LibrarySettings(Path("lib/manifest.json"), gates={"min_face_short": 40.0,
                                                           "min_faces": 6},
                          thresholds={"initial": 0.6, "swap_outlier": 0.45},
                          sources={"threshold:initial": "flag",
                                   "threshold:swap_outlier": "model default"})
    args = Namespace(min_face_short=None, min_faces=9, top_n=None, initial_threshold=None,
                     swap_outlier_threshold=None)
    r = resolve_settings(args, lib, {"initial": "initial_threshold",
                                     "swap_outlier": "swap_outlier_threshold"})
    assert args.min_face_short == 40.0 and r.sources["gate:min_face_short"] == "library"
    assert args.min_faces == 9 and r.sources["gate:min_faces"] == "flag"
    assert args.top_n == gate_defaults()["top_n"] and r.sources["gate:top_n"] == "default"
    # a threshold the library chose is used; one it only recorded from the model table is
    # left to the cache (a later calibrate --save wins over it)
    assert args.initial_threshold == 0.6 and args.swap_outlier_threshold is None
    assert "override (used, and recorded): --min-faces 9 (the library's 6)" in r.notes


@pytest.mark.unit
def test_derived_thresholds_follow_the_librarys_chosen_cluster_threshold():
    from facesets.core.settings import LibrarySettings, library_threshold
    from facesets.core.thresholds import ThresholdError, scaled

    lib = LibrarySettings(thresholds={"cluster": 0.65}, sources={"threshold:cluster": "flag"})
    meta = {"model": "testpack_s"}
    assert library_threshold("import_tight", meta, None, lib) == (
        scaled("import_tight", 0.65), "derived from the library's cluster threshold")
    assert library_threshold("import_tight", meta, 0.3, lib) == (0.3, "flag")
    # calibrated in the cache wins over the library's derivation; the table for buffalo_l
    cal = dict(meta, thresholds={"cluster": 0.5})
    assert library_threshold("import_tight", cal, None, lib)[0] == scaled("import_tight", 0.5)
    assert library_threshold("import_tight", {"model": "buffalo_l"}, None, lib) == (
        0.45, "model default")
    with pytest.raises(ThresholdError):   # no library, no calibration, no table
        library_threshold("import_tight", meta, None, LibrarySettings())


@pytest.mark.unit
def test_video_track_thresholds_come_from_the_library_of_its_faceset():
    """`video track --faceset DIR` on a model without built-in thresholds: the link and
    identity distances follow the library's cluster threshold (issue 22: it had none)."""
    from facesets.core.settings import LibrarySettings, library_threshold
    from facesets.core.thresholds import ThresholdError

    lib = LibrarySettings(thresholds={"cluster": 0.62}, sources={"threshold:cluster": "flag"})
    meta = {"model": "testpack_s"}
    # buffalo_l: both at its cluster distance
    for name, flag in (("track", "--track-threshold"), ("video_faceset", "--faceset-threshold")):
        assert library_threshold(name, meta, None, lib) == (
            0.62, "derived from the library's cluster threshold")
        assert library_threshold(name, {"model": "buffalo_l"}, None, lib) == (
            0.55, "model default")
        # no faceset given: no library to ask; the error names video merge's own flag
        with pytest.raises(ThresholdError, match=f"has no default for {flag}: pass {flag},"):
            library_threshold(name, meta, None, LibrarySettings())
