"""Re-exporting a curated swap-ready folder (issue 22 item 2): export-swap into a folder
whose facesets were edited by recorded runs keeps the runs, the maintenance sections and the
faces curated out by hand; it refuses (changing nothing) when a run moved faces or facesets
that a re-export from the refine manifest would bring back. Real subprocesses, real photos,
the offline pack; check_library walks the folder after every command."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import FACES, LOW_GATES, PACK, TEST_THRESHOLD, run_cli
from library_check import check_library, load

PEOPLE, PER_PERSON = 3, 6


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list]:
    """(work folder holding c.npz, refined/ and swap/, the export-swap argv) of 3 people.
    Read-only: copy swap/ before changing it."""
    root = tmp_path_factory.mktemp("reexport")
    src = root / "photos"
    people = [p for p in sorted(FACES.iterdir()) if len(list(p.iterdir())) >= 10][:PEOPLE]
    for person in people:
        (src / person.name).mkdir(parents=True)
        for f in sorted(person.iterdir())[:PER_PERSON]:
            shutil.copy2(f, src / person.name / f.name)
    run_cli("embed", src, root / "c.npz", *PACK, "--no-progress")
    run_cli("refine", root / "c.npz", root / "refined", "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
            "--min-faces", "4", *LOW_GATES, "--link", "symlink")
    export = ["export-swap", root / "c.npz", root / "refined" / "refine_manifest.json",
              root / "swap", "--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20",
              *PACK, "--no-progress"]
    run_cli(*export)
    return root, export


def library_copy(built, tmp_path: Path) -> tuple[Path, list]:
    """A copy of the built library and the export-swap argv that re-exports into it."""
    shutil.copytree(built[0] / "swap", tmp_path / "swap", symlinks=True)
    export = built[1]
    return tmp_path / "swap", [*export[:3], tmp_path / "swap", *export[4:]]


def kept_keys(swap: Path) -> dict[str, str]:
    """key -> faceset of every face the listed facesets keep."""
    return {f["key"]: e["name"] for e in load(swap / "manifest.json")["facesets"]
            for f in load(swap / e["manifest"])["faces"]}


def faces_by_rank(swap: Path, faceset: str) -> list[dict]:
    return sorted(load(swap / faceset / "manifest.json")["faces"], key=lambda f: f["rank"])


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_reexport_keeps_runs_sections_and_faces_dropped_by_hand(built, tmp_path):
    swap, export = library_copy(built, tmp_path)
    assert len(load(swap / "manifest.json")["facesets"]) >= 2
    picked = faces_by_rank(swap, "faceset_000")[:2]      # the best face (rank #0) and the next
    dropped = {f["key"] for f in picked}
    run_cli("drop-faces", swap, "faceset_000", *[f["file"] for f in picked])
    run_cli("rename", swap, "faceset_001", "Somebody")
    somebody = set(f["key"] for f in faces_by_rank(swap, "faceset_001"))
    before = load(swap / "manifest.json")
    runs = before["runs"]
    assert [e["step"] for e in runs] == ["drop-faces", "rename"]
    # a section another step wrote (the occlusion filter's last apply): carried as it is
    before["occlusion_filter_run"] = {"run": runs[0]["id"], "scores": "s.json"}
    (swap / "manifest.json").write_text(json.dumps(before))
    check_library(swap)

    for attempt in (1, 2):            # the second re-export must not bring anything back
        run_cli(*export)
        top = load(swap / "manifest.json")
        assert top["runs"] == runs, attempt
        assert top["occlusion_filter_run"] == before["occlusion_filter_run"]
        for section in ("masked", "thin_eras", "merged", "multiface_audit", "added", "split",
                        "eras", "quarantined"):
            assert top[section] == before.get(section, []), section
        kept = kept_keys(swap)
        assert not dropped & set(kept), f"re-export {attempt} brought dropped faces back"
        held = [d for e in top["facesets"] for d in load(swap / e["manifest"])["dropped"]
                if d.get("key") in dropped]
        assert sorted(d["key"] for d in held) == sorted(dropped)
        assert all(d["reason"] == "review" and (swap / "faceset_000" / d["moved_to"]).is_file()
                   for d in held)
        # the person renamed keeps the name (NAME.txt follows the faces)
        named = {kept[k] for k in somebody}
        assert len(named) == 1
        assert (swap / named.pop() / "NAME.txt").read_text().startswith("Somebody")
        check_library(swap)
        history = run_cli("history", swap).stdout
        assert f"history: {len(runs)} runs\n" in history, history
        assert all(e["id"] in history for e in runs)
        assert "interrupted" not in history

    # later recorded commands still work on the re-exported folder
    best = faces_by_rank(swap, "faceset_000")[0]
    run_cli("drop-faces", swap, "faceset_000", best["file"])
    run_cli("rename", swap, "faceset_000", "First")
    top = load(swap / "manifest.json")
    assert [e["step"] for e in top["runs"]] == ["drop-faces", "rename", "drop-faces", "rename"]
    assert best["key"] not in kept_keys(swap)
    check_library(swap)
    run_cli("undo", swap)                        # the rename, then the drop after the export
    run_cli("undo", swap)
    assert best["key"] in kept_keys(swap)
    check_library(swap)
    run_cli(*export)                      # and a third export keeps all of it
    top = load(swap / "manifest.json")
    assert [e["step"] for e in top["runs"]] == ["drop-faces", "rename", "drop-faces", "rename",
                                                "undo", "undo"]
    assert not dropped & set(kept_keys(swap))
    check_library(swap)


@pytest.mark.parametrize("edit", [
    lambda swap: ["quarantine", swap, "faceset_001"],
    lambda swap: ["move-face", swap, "faceset_000", faces_by_rank(swap, "faceset_000")[0]["file"],
                  "--into", "faceset_001"],
], ids=["quarantine", "move-face"])
def test_reexport_refuses_before_writing_when_a_run_moved_faces(built, tmp_path, edit):
    swap, export = library_copy(built, tmp_path)
    run_cli(*edit(swap))
    was = tree(swap)
    proc = run_cli(*export, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {swap / 'manifest.json'}: "), \
        proc.stderr
    assert "undo" in lines[0] and "new folder" in lines[0]
    assert tree(swap) == was
    run_cli("undo", swap)                  # once undone, the re-export runs again
    run_cli(*export)
    check_library(swap)


def test_undo_of_a_run_from_before_the_reexport_is_refused_and_changes_nothing(built, tmp_path):
    swap, export = library_copy(built, tmp_path)
    best = faces_by_rank(swap, "faceset_000")[0]
    run_cli("drop-faces", swap, "faceset_000", best["file"])
    run_cli(*export)
    was = tree(swap)
    proc = run_cli("undo", swap, check=False)
    assert proc.returncode != 0 and proc.stderr.startswith(f"error: {swap}: cannot undo run ")
    assert tree(swap) == was
    assert best["key"] not in kept_keys(swap)
    check_library(swap)
