"""run SRC OUT end to end on a small photo folder, killed twice (mid-embed, after cluster),
resumes at the first unfinished step and ends with one-face bundles per identity."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import FACES, LOW_GATES, PACK, ROOT, TEST_THRESHOLD, identity_of, run_cli

RUN_ARGS = [*PACK, "--threshold", TEST_THRESHOLD, "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES,
            "--min-faces", "5", "--swap-outlier-threshold", TEST_THRESHOLD,
            "--min-face-short", "40", "--flush-every", "5", "--no-progress"]
PEOPLE = 4


def _run_until(args: list, cwd: Path, done, timeout: float = 240) -> None:
    """Start `run`, kill -9 it as soon as ``done()`` holds."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "sort_faces.py"), "run", *args],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "run finished before it could be killed"


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "run_state.json").read_text())["steps"]
    except (OSError, ValueError, KeyError):
        return {}


def test_run_end_to_end_resumes_after_kills(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESETS_WORK_DIR", str(tmp_path / "work"))  # subprocesses inherit it
    src = tmp_path / "family"
    people = sorted(p for p in FACES.iterdir() if p.is_dir())[:PEOPLE]
    for p in people:
        shutil.copytree(p, src / p.name)
    n_photos = sum(1 for _ in src.rglob("*.jpg"))
    out = tmp_path / "out"
    args = [src, out, *RUN_ARGS]
    cache = tmp_path / "work" / "cache" / "family.npz"   # the default, in the work folder
    segs = Path(str(cache) + ".segments")

    # 1. killed mid-embed, once a flush has reached the cache
    _run_until(args, tmp_path, lambda: segs.is_dir() and any(segs.glob("seg-*.npz")))
    assert "embed" not in _state(out)
    # 2. killed once cluster has finished
    _run_until(args, tmp_path, lambda: "cluster" in _state(out))
    assert {"embed", "cluster"} <= set(_state(out))
    raw_created = json.loads((out / "raw" / "manifest.json").read_text())["created"]
    time.sleep(1.1)   # a redone step would write a later "created" stamp
    # 3. resumes after cluster and finishes
    r = run_cli("run", *args, cwd=tmp_path)
    assert "run: embed: done already" in r.stdout and "run: cluster: done already" in r.stdout
    assert json.loads((out / "raw" / "manifest.json").read_text())["created"] == raw_created
    assert set(_state(out)) == {"embed", "cluster", "refine", "dedup", "enrich", "export-swap"}

    # the outputs: every photo embedded once, one faceset per person, one face per PNG
    assert _state(out)["embed"]["summary"]["new"] < n_photos   # the rest came from step 1
    top = json.loads((out / "swap_ready" / "manifest.json").read_text())
    assert len(top["facesets"]) == PEOPLE
    seen = set()
    for entry in top["facesets"]:
        m = json.loads((out / "swap_ready" / entry["manifest"]).read_text())
        ids = Counter(identity_of(f["path"]) for f in m["faces"])
        assert len(ids) == 1
        seen |= set(ids)
    assert seen == {p.name for p in people}
    v = run_cli("verify-fsz", out / "swap_ready", *PACK, "--no-progress")
    assert f"verify-fsz: {2 * PEOPLE} of {2 * PEOPLE} bundles pass" in v.stdout
    assert (out / "raw" / "manifest.json").is_file()
    assert (out / "facesets" / "refine_manifest.json").is_file()
    assert Path(str(cache) + ".duplicates.json").is_file()

    # 4. nothing changed: nothing is redone; with --rebuild a changed export option redoes
    # only export (without it, OUT's library is grown, never re-exported: tests/test_grow.py)
    r = run_cli("run", *args, cwd=tmp_path)
    assert "run: ran nothing" in r.stdout and "nothing to grow" in r.stdout
    r = run_cli("run", *args, "--top-n", "3", "--rebuild", cwd=tmp_path)
    assert "ran export-swap; skipped embed, cluster, refine, dedup, enrich" in r.stdout
    # 5. a new photo: embed and everything after it run again (the library grown)
    extra = sorted(p for p in FACES.iterdir() if p.is_dir())[PEOPLE]
    shutil.copy2(next(extra.glob("*.jpg")), src / "new.jpg")
    r = run_cli("run", *args, "--top-n", "3", cwd=tmp_path)
    assert "ran embed, extend, dedup, enrich, grow" in r.stdout
    r = run_cli("run", *args, "--top-n", "3", "--rebuild", cwd=tmp_path)
    assert "ran cluster, refine, export-swap" in r.stdout, r.stdout
