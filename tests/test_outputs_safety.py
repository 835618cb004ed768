"""Output folders and photo sources (issue 8, items 1, 2, 8, 12, 15): a user's folders beside
OUT survive every command; OUT inside SRC is never scanned; OUT == SRC is refused; two
export-swaps into one OUT are kept apart by a lock; non-UTF-8 file names work end to end;
symlinked folders are followed and everything skipped is reported."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import FACES, PACK, ROOT, SHARED, TEST_THRESHOLD, copy_cache, run_cli
from test_run import RUN_ARGS

REFINE_ARGS = ["--initial-threshold", TEST_THRESHOLD, "--merge-threshold", "0.5",
               "--outlier-threshold", TEST_THRESHOLD, "--min-short", "20", "--min-blur", "0",
               "--min-det-score", "0.5", "--min-faces", "5"]
EXPORT_ARGS = ["--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "40",
               "--model-root", str(SHARED / "insightface"), "--no-progress"]
PEOPLE = 4
# a file name whose bytes are not UTF-8 (Latin-1 "café"), as old cameras and SMB shares write
ODD_NAME = os.fsdecode(b"caf\xe9.jpg")


def _library(dest: Path, people: int = PEOPLE) -> list[str]:
    """A small photo library of ``people`` persons (copies of the real test photos)."""
    names = sorted(p.name for p in FACES.iterdir() if p.is_dir())[:people]
    for name in names:
        shutil.copytree(FACES / name, dest / name)
    return names


def _user_folder(path: Path) -> list[str]:
    """A folder of the user's own photos; returns its file names."""
    path.mkdir(parents=True)
    for src in sorted((FACES / "Ariel_Sharon").glob("*.jpg"))[:3]:
        shutil.copy2(src, path / src.name)
    return sorted(p.name for p in path.iterdir())


def _faceset_keys(swap: Path) -> list[list[str]]:
    top = json.loads((swap / "manifest.json").read_text(encoding="utf-8"))
    return [sorted(f["key"] for f in json.loads(
        (swap / e["manifest"]).read_text(encoding="utf-8"))["faces"]) for e in top["facesets"]]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 4-person library, embedded once."""
    root = tmp_path_factory.mktemp("small")
    lib = root / "lib"
    _library(lib)
    cache = root / "lib.npz"
    run_cli("embed", lib, cache, *PACK, "--no-progress")
    return root, lib, cache


# ---- item 1: folders face-sets did not make are never removed ----------------------------
def test_user_folders_beside_out_survive_every_command(small, tmp_path):
    _, _, shared_cache = small
    cache = copy_cache(shared_cache, tmp_path)
    work = tmp_path / "w"
    mine = {}
    for out in ("sorted", "facesets", "swap"):
        for name in (f"{out}.old", f".{out}.partial"):
            mine[work / name] = _user_folder(work / name)
    # inside the export folder too: its per-faceset staging and _candidates
    swap = work / "swap"
    for name in (".faceset_000.partial", "._candidates.partial", ".faceset_000.old"):
        mine[swap / name] = _user_folder(swap / name)
    for _ in range(2):   # the second run replaces each output
        run_cli("cluster", cache, work / "sorted", "--threshold", TEST_THRESHOLD)
        run_cli("refine", cache, work / "facesets", *REFINE_ARGS)
        run_cli("export-swap", cache, work / "facesets" / "refine_manifest.json", swap,
                *EXPORT_ARGS, "--candidates", "--candidate-match-threshold", TEST_THRESHOLD,
                "--raw-manifest", work / "sorted" / "manifest.json")
    for folder, files in mine.items():
        assert sorted(p.name for p in folder.iterdir()) == files, folder
    # nothing of face-sets' own staging is left behind
    assert not list(work.glob(".*.facesets-*")) and not list(swap.glob(".*.facesets-*"))
    assert (work / "sorted" / "manifest.json").is_file()


@pytest.mark.unit
def test_only_marked_staging_leftovers_are_removed(tmp_path):
    """A killed run's staging folder (marked, owner dead) is removed by the next run; a
    hidden folder that merely looks like one is not."""
    from facesets.io.fsutil import OWNED_MARKER, make_staging, replace_dir

    out = tmp_path / "sorted"
    dead = tmp_path / ".sorted.facesets-dead01"
    (dead / "sorted").mkdir(parents=True)
    (dead / OWNED_MARKER).write_text(json.dumps({"pid": 2 ** 22 + 7, "host": os.uname()[1]}))
    lookalike = tmp_path / ".sorted.facesets-mine"
    files = _user_folder(lookalike)
    stage = make_staging(out)
    (stage / "manifest.json").write_text("{}")
    replace_dir(stage, out)
    assert not dead.exists()
    assert sorted(p.name for p in lookalike.iterdir()) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sorted.facesets-mine", "sorted"]
    # killed after setting the old output aside, before swapping the new one in: the next
    # run puts the old output back first
    aside = tmp_path / ".sorted.facesets-aside1"
    aside.mkdir()
    os.replace(out, aside / "sorted")
    (aside / OWNED_MARKER).write_text(json.dumps({"pid": 2 ** 22 + 7, "host": os.uname()[1],
                                                  "role": "aside"}))
    make_staging(out)
    assert (out / "manifest.json").read_text() == "{}" and not aside.exists()


# ---- item 2: OUT inside SRC, OUT == SRC ---------------------------------------------------
def test_run_with_out_inside_src_twice_gives_the_same_facesets(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESETS_WORK_DIR", str(tmp_path / "work"))
    lib = tmp_path / "lib"
    _library(lib)
    out = lib / "sorted"
    mine = {out / "raw.old": None, out / ".raw.partial": None, out / ".facesets.partial": None}
    for folder in mine:
        mine[folder] = _user_folder(folder)
    first = run_cli("run", lib, out, *RUN_ARGS, cwd=tmp_path)
    keys = _faceset_keys(out / "swap_ready")
    assert len(keys) == PEOPLE, first.stdout
    raw = json.loads((out / "raw" / "manifest.json").read_text())["summary"]
    second = run_cli("run", lib, out, *RUN_ARGS, cwd=tmp_path)
    assert _faceset_keys(out / "swap_ready") == keys, second.stdout
    assert json.loads((out / "raw" / "manifest.json").read_text())["summary"] == raw
    for folder, files in mine.items():   # item 1 for run: OUT/raw.old etc. survive
        assert sorted(p.name for p in folder.iterdir()) == files, folder
    # embed of SRC names the face-sets folders it skipped, once
    r = run_cli("embed", lib, tmp_path / "again.npz", *PACK, "--no-progress")
    skipped = [line for line in r.stdout.splitlines() if "written by face-sets" in line]
    assert len(skipped) == 1 and "3 folders" in skipped[0], r.stdout
    assert all(str(out / sub) in skipped[0] for sub in ("raw", "facesets", "swap_ready"))


def test_out_equal_to_src_is_refused(tmp_path):
    lib = tmp_path / "lib"
    _library(lib, 1)
    before = sorted(lib.rglob("*"))
    r = run_cli("run", lib, lib, *RUN_ARGS, check=False, cwd=tmp_path,
                env={"FACESETS_WORK_DIR": str(tmp_path / "work")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot be SRC" in r.stderr
    r = run_cli("embed", lib, lib, *PACK, "--no-progress", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert sorted(lib.rglob("*")) == before


# ---- item 8: one writer per output folder -------------------------------------------------
def test_second_export_into_one_out_is_refused_while_the_first_runs(small, tmp_path):
    from facesets.formats.bundle import read_fsz

    _, _, cache = small
    refined = tmp_path / "facesets"
    run_cli("refine", cache, refined, *REFINE_ARGS)
    rm = refined / "refine_manifest.json"
    out = tmp_path / "swap"
    lock = tmp_path / ".swap.facesets.lock"
    first = subprocess.Popen([sys.executable, str(ROOT / "sort_faces.py"), "export-swap",
                              str(cache), str(rm), str(out), *EXPORT_ARGS],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock.exists(), "the first export never took the output lock"
    second = run_cli("export-swap", cache, rm, out, *EXPORT_ARGS, check=False)
    assert first.wait(300) == 0, first.stderr.read()
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1 and str(lock) in second.stderr
    assert "in use by pid" in second.stderr
    run_cli("export-swap", cache, rm, out, *EXPORT_ARGS)   # free again once the first is done
    assert not lock.exists()
    bundles = sorted(out.glob("faceset_*/*.fsz"))
    assert bundles
    for path in bundles:
        contents = read_fsz(path)
        assert contents.pngs and not contents.skipped
        for name, data in contents.pngs:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.shape[0] > 0, (path, name)


# ---- item 12: non-UTF-8 file names --------------------------------------------------------
def test_non_utf8_file_name_works_end_to_end(tmp_path):
    lib = tmp_path / "lib"
    names = _library(lib, 2)
    # one real photo renamed to a name that is not UTF-8
    first = sorted((lib / names[0]).glob("*.jpg"))[0]
    odd_path = os.path.join(str(lib / names[0]), ODD_NAME)
    os.rename(os.fsencode(first), os.fsencode(odd_path))
    cache = tmp_path / "lib.npz"
    run_cli("embed", lib, cache, *PACK, "--no-progress")
    run_cli("cluster", cache, tmp_path / "raw", "--threshold", TEST_THRESHOLD)
    run_cli("refine", cache, tmp_path / "facesets", *REFINE_ARGS)
    run_cli("dedup", cache, "--no-progress")
    run_cli("export-swap", cache, tmp_path / "facesets" / "refine_manifest.json",
            tmp_path / "swap", *EXPORT_ARGS)

    def entries(manifest: Path, groups: str) -> list[tuple[Path, dict]]:
        m = json.loads(manifest.read_text(encoding="utf-8"))
        return [(manifest.parent / g["name"], f) for g in m[groups] for f in g["faces"]
                if f["path"] == odd_path]

    for manifest, groups in ((tmp_path / "raw" / "manifest.json", "persons"),
                             (tmp_path / "facesets" / "refine_manifest.json", "facesets")):
        found = entries(manifest, groups)
        assert len(found) == 1, manifest   # the path reads back byte for byte
        folder, face = found[0]
        assert face["files"] and all((folder / name).is_file() for name in face["files"])
    swap = tmp_path / "swap"
    faces = [f for d in swap.glob("faceset_*") for f in json.loads(
        (d / "manifest.json").read_text(encoding="utf-8"))["faces"] if f["path"] == odd_path]
    assert len(faces) == 1
    assert Path(f"{cache}.duplicates.json").is_file()


# ---- item 15: symlinked folders, unsupported formats, unreadable folders ------------------
def test_symlinked_source_is_followed_and_skips_are_reported(tmp_path):
    real = tmp_path / "real"
    names = _library(real, 2)
    n_photos = sum(1 for _ in real.rglob("*.jpg"))
    src = tmp_path / "src"
    src.mkdir()
    for name in names:
        (src / name).symlink_to(real / name, target_is_directory=True)
    (src / "again").symlink_to(real / names[0], target_is_directory=True)  # same folder twice
    (src / names[1] / "loop").symlink_to(src, target_is_directory=True)    # a loop
    (real / names[0] / "IMG_0001.JXL").write_bytes(b"\0" * 64)
    (real / names[0] / "scan.jxl").write_bytes(b"\xff\x0a")
    r = run_cli("embed", src, tmp_path / "c.npz", *PACK, "--no-progress")
    assert f"files seen {n_photos}," in r.stdout, r.stdout
    assert "skipped 2 files in formats embed cannot read yet (2 .jxl)" in r.stdout
    assert "symlinked folders already listed" in r.stdout
    # a source with no photo at all says so (exit 0: an empty folder is not an error)
    empty = tmp_path / "empty"
    (empty / "phone").mkdir(parents=True)
    (empty / "phone" / "IMG_0002.jxl").write_bytes(b"\0" * 64)
    r = run_cli("embed", empty, tmp_path / "e.npz", *PACK, "--no-progress")
    assert f"no photos found in {empty}" in r.stdout and "1 .jxl" in r.stdout
    # run stops there with one error line (exit 2) instead of failing on a missing cache
    r = run_cli("run", empty, tmp_path / "out", *RUN_ARGS, check=False,
                env={"FACESETS_WORK_DIR": str(tmp_path / "work")})
    assert r.returncode == 2 and r.stderr == f"error: {empty}: no photos found; nothing to sort\n"


def test_unreadable_folder_is_reported(tmp_path, monkeypatch):
    from facesets.sources.folder import scan_source

    lib = tmp_path / "lib"
    _library(lib, 2)
    locked = sorted(p for p in lib.iterdir())[1]
    real_scandir = os.scandir

    def scandir(path="."):   # root ignores chmod: refuse the folder as the OS would
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = scan_source(str(lib))
    assert found.unreadable == [(str(locked), "Permission denied")]
    assert f"skipped unreadable folder {locked} (Permission denied)" in found.skipped_lines(
        str(lib))
