"""audit-multiface on a real export-swap output: stage -> worker (subprocess) -> apply."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import FACES, GROUP, LOW_GATES, PACK, ROOT, TEST_THRESHOLD, run_cli
from facesets.formats.bundle import read_fsz
from facesets.formats.queue import read_jsonl

WORKER = ROOT / "work" / "multiface_worker.py"
PEOPLE, PER_PERSON = 3, 6


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A real export-swap output of 3 people (6 photos each), built once. Read-only."""
    root = tmp_path_factory.mktemp("audit_export")
    src = root / "photos"
    people = [p for p in sorted(FACES.iterdir()) if len(list(p.iterdir())) >= 10][:PEOPLE]
    for person in people:
        (src / person.name).mkdir(parents=True)
        for f in sorted(person.iterdir())[:PER_PERSON]:
            shutil.copy2(f, src / person.name / f.name)
    cache = root / "c.npz"
    run_cli("embed", src, cache, *PACK, "--no-progress")
    run_cli("refine", cache, root / "refined", "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
            "--min-faces", "4", *LOW_GATES, "--link", "symlink")
    out = root / "export"
    run_cli(*export_args(root, out))
    return out


def export_args(root: Path, out: Path) -> list:
    """export-swap of the cache and facesets the export_dir fixture made in ``root``."""
    return ["export-swap", root / "c.npz", root / "refined" / "refine_manifest.json", out,
            "--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20", *PACK,
            "--no-progress"]


def tree(root: Path) -> dict[str, str]:
    """Every file under root with its sha256 (the whole state on disk)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def plant_two_faces(png: Path) -> None:
    """Overwrite an exported crop with a real photo of two people, at the crop's size."""
    size = cv2.imread(str(png)).shape[:2]
    two = cv2.imread(str(GROUP / "face_recognition_two_people.jpg"))
    cv2.imwrite(str(png), cv2.resize(two, (size[1], size[0])))


def run_worker(queue, results, *extra):
    return subprocess.run([sys.executable, str(WORKER), str(queue), str(results),
                           "--no-progress", *map(str, extra)],
                          capture_output=True, text=True, check=True)


def test_audit_drops_a_planted_two_face_png_and_only_that(export_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(export_dir, out)
    top = json.loads((out / "manifest.json").read_text())
    assert len(top["facesets"]) == PEOPLE
    victim_set = out / "faceset_000"
    fs_before = json.loads((victim_set / "manifest.json").read_text())
    victim = fs_before["faces"][1]
    plant_two_faces(victim_set / victim["file"])
    planted = (victim_set / victim["file"]).read_bytes()
    queue, results = tmp_path / "mq.json", tmp_path / "mres.jsonl"
    run_cli("audit-multiface", "stage", out, queue, *PACK)
    items = json.loads(queue.read_text())["items"]
    n_pngs = sum(len(json.loads((out / f["name"] / "manifest.json").read_text())["faces"])
                 for f in top["facesets"])
    assert len(items) == n_pngs

    proc = run_worker(queue, results)
    assert "to drop 1" in proc.stdout
    counts = {r["id"]: r["faces"] for r in read_jsonl(results)[0]}
    victim_id = f"faceset_000/{victim['file']}"
    assert counts.pop(victim_id) >= 2
    assert set(counts.values()) == {1}, "export-swap crops must show exactly one face"

    before = tree(out)
    dry = run_cli("audit-multiface", "apply", queue, results, "--dry-run")
    assert f"drop {victim_id}" in dry.stdout and "nothing changed" in dry.stdout
    assert tree(out) == before, "--dry-run must not change anything on disk"

    run_cli("audit-multiface", "apply", queue, results)
    after = tree(out)
    moved = f"faceset_000/faces/_dropped/{Path(victim['file']).name}"
    assert (out / moved).read_bytes() == planted            # reversible: the bytes are kept
    assert not (victim_set / victim["file"]).exists()
    untouched = [k for k in before if k.endswith(".png") and "/faces/" in k
                 and k != victim_id]
    assert all(after[k] == before[k] for k in untouched)     # single-face PNGs left alone

    fs = json.loads((victim_set / "manifest.json").read_text())
    assert [f["key"] for f in fs["faces"]] == [f["key"] for f in fs_before["faces"]
                                               if f["key"] != victim["key"]]
    entry = [d for d in fs["dropped"] if d["key"] == victim["key"]]
    assert entry and entry[0]["reason"] == "multiface_audit"
    assert entry[0]["faces_detected"] >= 2 and entry[0]["moved_to"] == moved.split("/", 1)[1]
    assert fs["history"][-1]["step"] == "audit-multiface"
    # the bundles hold exactly the remaining PNGs, in rank order
    all_bundle = read_fsz(victim_set / fs["bundles"]["all"])
    assert [data for _, data in all_bundle.pngs] == [
        (victim_set / f["file"]).read_bytes() for f in fs["faces"]]
    top_after = json.loads((out / "manifest.json").read_text())
    listing = {f["name"]: f for f in top_after["facesets"]}
    assert listing["faceset_000"]["faces"] == len(fs_before["faces"]) - 1
    audit = top_after["multiface_audit"][-1]
    assert audit["dropped"] == 1 and audit["by_faceset"] == {"faceset_000": 1}
    assert audit["checked"] == len(items) and audit["when"] and audit["why"]
    # other facesets: byte-identical (.runs/: the run's record, for undo; the overview page
    # and its thumbnail sheets show faceset_000 too)
    view = ("manifest.json", "index.html")
    assert {k: v for k, v in after.items() if not k.startswith(("faceset_000/", ".runs/",
                                                                "_thumbs/"))
            and k not in view} == \
        {k: v for k, v in before.items() if not k.startswith(("faceset_000/", "_thumbs/"))
         and k not in view}

    # the same results applied again: nothing changes, no second record
    done = tree(out)
    again = run_cli("audit-multiface", "apply", queue, results)
    assert "applied already" in again.stdout and "nothing changed" in again.stdout
    assert tree(out) == done


def test_worker_resumes_past_a_half_written_result_line(export_dir, tmp_path):
    queue, results = tmp_path / "mq.json", tmp_path / "mres.jsonl"
    run_cli("audit-multiface", "stage", export_dir, queue, *PACK)
    items = json.loads(queue.read_text())["items"]
    run_worker(queue, results, "--flush-every", "4")
    lines = results.read_bytes().splitlines(keepends=True)
    assert len(lines) == len(items)
    # what a kill in the middle of a write leaves: the last two records gone, one half-written
    results.write_bytes(b"".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    proc = run_worker(queue, results)
    assert f"already done {len(items) - 2}" in proc.stdout and "done now 2" in proc.stdout
    records, bad = read_jsonl(results)
    assert bad == 0
    assert sorted(r["id"] for r in records) == sorted(it["id"] for it in items)


def test_apply_refuses_missing_results_and_a_foreign_queue(export_dir, tmp_path):
    queue = tmp_path / "mq.json"
    run_cli("audit-multiface", "stage", export_dir, queue, *PACK)
    proc = run_cli("audit-multiface", "apply", queue, tmp_path / "none.jsonl", check=False)
    assert proc.returncode == 2 and "multiface_worker.py" in proc.stderr
    proc = run_cli("audit-multiface", "stage", tmp_path, queue, check=False)
    assert proc.returncode == 2 and "manifest" in proc.stderr


def _consistent(out: Path) -> None:
    """The top manifest, every faceset manifest and every bundle agree with the files."""
    top = json.loads((out / "manifest.json").read_text())
    assert not list(out.rglob("*.tmp")) and not (out / ".multiface_audit.plan.json").exists()
    for entry in top["facesets"]:
        fdir = out / entry["name"]
        fs = json.loads((fdir / "manifest.json").read_text())
        assert entry["faces"] == len(fs["faces"]) and entry["dropped"] == len(fs["dropped"])
        on_disk = sorted(p.relative_to(fdir).as_posix() for p in (fdir / "faces").glob("*.png"))
        assert on_disk == sorted(f["file"] for f in fs["faces"])
        for d in fs["dropped"]:
            if d["reason"] == "multiface_audit":
                assert d["faces_detected"] != 1 and (fdir / d["moved_to"]).is_file()
        bundle = read_fsz(fdir / fs["bundles"]["all"])
        assert [data for _, data in bundle.pngs] == [(fdir / f["file"]).read_bytes()
                                                     for f in fs["faces"]]


def test_apply_killed_at_sampled_commits_then_rerun_equals_one_clean_apply(export_dir, tmp_path):
    """kill -9 at a spread of apply's file commits (just before and just after each), re-run:
    the result equals an uninterrupted apply (same faces, bundles, one record, right
    counts); a further apply changes nothing."""
    from killpoints import count_commits, run_killed, snapshot, was_killed

    pristine, out = tmp_path / "pristine", tmp_path / "export"
    shutil.copytree(export_dir, pristine)
    victims = [("faceset_000", 1), ("faceset_001", 0), ("faceset_001", 2)]
    for name, rank in victims:
        fs = json.loads((pristine / name / "manifest.json").read_text())
        plant_two_faces(pristine / name / fs["faces"][rank]["file"])
    shutil.copytree(pristine, out)
    queue, results = tmp_path / "mq.json", tmp_path / "mres.jsonl"
    run_cli("audit-multiface", "stage", out, queue, *PACK)
    run_worker(queue, results)
    apply = ["audit-multiface", "apply", queue, results]

    commits = count_commits(apply)
    _consistent(out)
    clean = snapshot(out)
    top = json.loads((out / "manifest.json").read_text())
    assert len(top["multiface_audit"]) == 1
    record = top["multiface_audit"][0]
    assert record["dropped"] == 3 and record["by_faceset"] == {"faceset_000": 1,
                                                               "faceset_001": 2}
    assert commits >= 10   # plan + 3 moves + 2 x (2 bundles + manifest) + top

    # a spread of the commits (first, last, three between: the plan, moves, bundles,
    # manifests, the top); every one of them: bench/kill_campaign.py
    points = sorted({1, commits, *(round(1 + j * (commits - 1) / 4) for j in (1, 2, 3))})
    kills = 0
    for n in points:
        for mode in ("before", "after"):
            shutil.rmtree(out)
            shutil.copytree(pristine, out)
            kills += was_killed(run_killed(apply, n, mode))
            run_cli(*apply)
            _consistent(out)
            assert snapshot(out) == clean, f"killed {mode} commit {n}"
    again = run_cli(*apply)                              # after success: no change
    assert "nothing changed" in again.stdout and snapshot(out) == clean
    assert kills == 2 * len(points)


def test_export_swap_again_keeps_the_audit_drops(export_dir, tmp_path):
    """export -> audit apply -> export-swap again: the dropped faces stay out of faces/ and
    every bundle, _dropped/ still holds their PNGs, the entries keep the audit's reason."""
    out = tmp_path / "export"
    shutil.copytree(export_dir, out)
    fs0 = json.loads((out / "faceset_000" / "manifest.json").read_text())
    victim = fs0["faces"][1]
    plant_two_faces(out / "faceset_000" / victim["file"])
    planted = (out / "faceset_000" / victim["file"]).read_bytes()
    queue, results = tmp_path / "mq.json", tmp_path / "mres.jsonl"
    run_cli("audit-multiface", "stage", out, queue, *PACK)
    run_worker(queue, results)
    run_cli("audit-multiface", "apply", queue, results)
    moved = json.loads((out / "faceset_000" / "manifest.json").read_text())["dropped"][-1]
    assert moved["key"] == victim["key"] and moved["reason"] == "multiface_audit"

    run_cli(*export_args(export_dir.parent, out))
    top = json.loads((out / "manifest.json").read_text())
    assert len(top["multiface_audit"]) == 1
    for entry in top["facesets"]:
        fdir = out / entry["name"]
        fs = json.loads((fdir / "manifest.json").read_text())
        assert victim["key"] not in {f["key"] for f in fs["faces"]}
        for bundle in fs["bundles"]["top"], fs["bundles"]["all"]:
            assert planted not in [data for _, data in read_fsz(fdir / bundle).pngs]
        assert planted not in [p.read_bytes() for p in (fdir / "faces").glob("*.png")]
    fs = json.loads((out / "faceset_000" / "manifest.json").read_text())
    entry = [d for d in fs["dropped"] if d["key"] == victim["key"]]
    assert len(entry) == 1 and entry[0]["reason"] == "multiface_audit"
    assert entry[0]["faces_detected"] >= 2
    assert (out / "faceset_000" / entry[0]["moved_to"]).read_bytes() == planted
    assert fs["summary"]["dropped"]["multiface_audit"] == 1
    assert len(fs["faces"]) == len(fs0["faces"]) - 1
