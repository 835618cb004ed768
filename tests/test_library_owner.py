"""core/library.Library, the one owner of a library-changing command: the lock (refused
while another process holds it), an interrupted run finished on open, a dry run that changes
nothing, the summary's undo line (run as printed, it restores the folder), and plans and
summaries that name a faceset by its label ("faceset_000 (Anna)")."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TEST_THRESHOLD, run_cli
from library_check import check_library
from test_identity_ops import CONSOLIDATE, build_split, tree

from facesets.core.library import Library, display_name, display_names
from facesets.core.newsets import ensure_library
from facesets.io.fsutil import LockError

# holds a folder's lock until its stdin closes (another face-sets process at work)
HOLDER = ("import sys; from facesets.io.fsutil import output_lock\n"
          "with output_lock(sys.argv[1]):\n"
          "    print('held', flush=True); sys.stdin.read()\n")


def empty_library(root: Path) -> Path:
    assert ensure_library(root, root.parent / "c.npz", {"model": "testpack_s"})
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Read-only: copy it before changing it."""
    return build_split(tmp_path_factory.mktemp("owner"))


@pytest.fixture
def lib_dir(built, tmp_path) -> Path:
    out = tmp_path / "swap"
    shutil.copytree(built, out, symlinks=True)
    return out


@pytest.mark.unit
def test_display_names_a_faceset_by_the_label_its_name_file_holds(tmp_path):
    (tmp_path / "faceset_017").mkdir()
    (tmp_path / "faceset_002").mkdir()
    (tmp_path / "faceset_017" / "NAME.txt").write_text("# a comment first\n  Anna   Maria \n")
    (tmp_path / "faceset_002" / "NAME.txt").write_text(
        "# Write this person's name on the first line; it is kept across re-runs.\n")
    assert display_name(tmp_path, "faceset_017") == "faceset_017 (Anna Maria)"
    assert display_name(tmp_path, "faceset_002") == "faceset_002"      # export's template
    assert display_name(tmp_path, "faceset_404") == "faceset_404"      # no folder
    assert display_name(tmp_path, "../etc") == "../etc"                # never read
    assert display_names(tmp_path, ["faceset_017", "faceset_002"]) == {
        "faceset_017": "faceset_017 (Anna Maria)", "faceset_002": "faceset_002"}


def test_open_is_refused_while_another_process_holds_the_lock(tmp_path):
    root = empty_library(tmp_path / "swap")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(root)
        with pytest.raises(LockError, match="in use"):
            with Library(root).open():
                pytest.fail("opened a library another process holds")
        # a command on it: one error line, exit 2, nothing changed
        proc = run_cli("rename", root, "faceset_000", "Anna", check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "in use" in lines[0]
        assert tree(root) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with Library(root).open() as lib:      # free again once the holder is gone
        assert lib.finished == []


def commit_of(lib_dir: Path, tmp_path: Path, argv: list, ends: str) -> int:
    """The number of the commit of ``argv`` (a command on a copy of ``lib_dir``) that wrote
    the path ending in ``ends`` (fsutil's FACESETS_COMMIT_LOG)."""
    scratch, log = tmp_path / "count" / lib_dir.name, tmp_path / "commits.log"
    shutil.copytree(lib_dir, scratch, symlinks=True)
    run_cli(*[scratch if a == lib_dir else a for a in argv],
            env={"FACESETS_COMMIT_LOG": str(log)})
    for line in log.read_text().splitlines():
        n, what = line.split("\t", 1)
        if what.endswith(ends):
            return int(n)
    raise AssertionError(f"no commit of {ends} in {log.read_text()}")


def test_an_interrupted_run_is_finished_when_the_library_is_opened(lib_dir, tmp_path):
    # rename killed after its run was recorded and NAME.txt installed, before the commit
    argv = ["rename", lib_dir, "faceset_000", "Anna"]
    at = commit_of(lib_dir, tmp_path, argv, "faceset_000/NAME.txt")
    proc = run_cli(*argv, check=False, env={"FACESETS_KILL_AT_COMMIT": str(at)})
    assert proc.returncode != 0
    pending = [p.name for p in (lib_dir / ".runs").iterdir() if not p.name.startswith(".")]
    assert len(pending) == 1
    top = json.loads((lib_dir / "manifest.json").read_text())
    assert not top.get("runs")                         # not committed yet
    said = []
    lib = Library(lib_dir, said.append)
    with lib.open():
        assert lib.finished == pending
    assert said and said[0].startswith("  finishing the interrupted rename run")
    assert [e["id"] for e in lib.top["runs"]] == pending
    assert lib.label("faceset_000") == "Anna"
    assert lib.display("faceset_000") == "faceset_000 (Anna)"
    check_library(lib_dir)
    with lib.open():                                   # nothing left to finish
        assert lib.finished == []


def test_dry_run_changes_nothing_and_a_real_run_prints_the_undo_line_that_reverses_it(lib_dir):
    run_cli("rename", lib_dir, "faceset_000", "Anna")
    before = tree(lib_dir)
    dry = run_cli("consolidate", lib_dir, *CONSOLIDATE, "--dry-run")
    assert tree(lib_dir) == before
    assert "consolidate (dry run, nothing changed):" in dry.stdout
    # the plan names the labelled faceset by its label; the others by their bare name
    merge = [ln for ln in dry.stdout.splitlines() if ln.strip().startswith("merge into")]
    assert len(merge) == 1 and "faceset_000 (Anna)" in merge[0], dry.stdout
    assert re.search(r": faceset_003 \(0\.[0-9]{3}\);", merge[0]), merge[0]   # no label

    real = run_cli("consolidate", lib_dir, *CONSOLIDATE)
    assert merge[0] in real.stdout                    # the same plan, carried out
    m = re.search(r"; run (\S+) \(undo: `library undo (\S+) (\S+)`\)$", real.stdout.strip())
    assert m, real.stdout
    run_id, root, again = m.groups()
    assert again == run_id and Path(root) == lib_dir.resolve()
    top = json.loads((lib_dir / "manifest.json").read_text())
    assert top["runs"][-1]["id"] == run_id
    assert top["summary"]["facesets"] == len(top["facesets"])
    assert top["summary"]["faces_kept"] == sum(e["faces"] for e in top["facesets"])
    check_library(lib_dir)

    undo = run_cli("undo", root, run_id)               # the line as printed
    assert "faceset_000 (Anna)" in undo.stdout        # what it reverses, by label
    after = tree(lib_dir)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # only the run's own records (and the report) differ from before the merge
    assert all(k.startswith(".runs/") or k == "manifest.json" or k.startswith("_thumbs/")
               or k == "index.html" for k in changed), sorted(changed)
    check_library(lib_dir)


def test_summaries_and_history_name_facesets_by_label(lib_dir):
    run_cli("rename", lib_dir, "faceset_001", "Bob Smith")
    m = json.loads((lib_dir / "faceset_001" / "manifest.json").read_text())
    face = sorted(m["faces"], key=lambda f: f["rank"])[-1]["file"]
    drop = run_cli("drop-faces", lib_dir, "faceset_001", face)
    assert "faceset drop: 1 faces of faceset_001 (Bob Smith) moved to faces/_dropped/" \
        in drop.stdout
    split = run_cli("split", lib_dir, "faceset_001", "--threshold", TEST_THRESHOLD,
                    "--dry-run")
    assert "split: faceset_001 (Bob Smith) re-clustered" in split.stdout
    assert "split (dry run, nothing changed): faceset_001 (Bob Smith):" in split.stdout
    history = run_cli("history", lib_dir).stdout.splitlines()
    assert any("drop-faces" in ln and "facesets faceset_001 (Bob Smith)" in ln
               for ln in history), history
    rename_again = run_cli("rename", lib_dir, "faceset_001", "Robert")
    assert "rename: faceset_001 (Bob Smith) is now 'Robert'" in rename_again.stdout
    quarantine = run_cli("quarantine", lib_dir, "faceset_001")
    assert "quarantine: faceset_001 (Robert) moved to _quarantine/" in quarantine.stdout
    check_library(lib_dir)


def test_operation_prints_the_plan_applies_and_reports(tmp_path):
    """Library.operation with a plan of its own: a dry run calls no apply and takes no
    lock; a real one applies under the lock, rewrites index.html, ends with the undo line."""
    root = empty_library(tmp_path / "swap")

    class Plan:
        def lines(self):
            return ["first", "second"]

        def line(self):
            return "two things"

    said, applied = [], []
    lib = Library(root, said.append)
    lib.operation("demo", Plan, lambda p, log: applied.append(p), dry_run=True)
    assert said == ["  first", "  second", "demo (dry run, nothing changed): two things"]
    assert applied == [] and not (root / "index.html").exists()
    said.clear()
    lock = root.with_name(f".{root.name}.facesets.lock")

    def apply(plan, log):
        assert lock.exists()                          # under the folder's lock
        log("did it")
        return {"id": "0001-abc"}

    t0 = time.time()
    lib.operation("demo", Plan, apply, dry_run=False)
    assert said == ["  first", "  second", "  did it",
                    f"demo: two things; run 0001-abc (undo: `library undo {root} 0001-abc`)"]
    assert (root / "index.html").stat().st_mtime >= t0 - 1
    assert lib.undo_line(None) == "nothing changed"
