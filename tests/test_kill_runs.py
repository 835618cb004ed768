"""kill -9 at the commits where a recorded run and what follows it used to disagree
(tests/killharness.py): a bare `undo` killed right after its top-manifest commit (the re-run
must finish the report rewrite, not say "no run left to undo"), and `occlusion apply`
killed at its commits (the re-run must keep the applied run's plan file, not rewrite it as
a no-op plan that contradicts the manifest's masked[]). Each re-run is compared with an
uninterrupted run: same files, same bytes (timestamps aside)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import HAVE_SHARED, NO_SHARED, run_cli
from killharness import KILLED, KillHarness, Scenario, compare, state

if not HAVE_SHARED:    # test_identity_ops lists ../shared's photos when imported
    pytest.skip(NO_SHARED, allow_module_level=True)
from library_check import check_library, load  # noqa: E402
from test_identity_ops import CONSOLIDATE, build_split  # noqa: E402

from facesets.formats.occlusion import new_scores, plan_path, write_scores  # noqa: E402
from facesets.io.fsutil import sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """Read-only: 4 facesets of 3 people (see test_identity_ops.build_split)."""
    return build_split(tmp_path_factory.mktemp("kill_runs"))


def kill_at(h: KillHarness, scenario: Scenario, k: int) -> list[str]:
    """Kill at commit k, re-run, compare with the reference; the differences."""
    h.reset()
    first = h.run(kill_at=k, tag=f"kill{k}")
    assert first.rc == KILLED, (k, first.tail())
    again = h.run(tag=f"rerun{k}")
    assert again.rc == 0, (k, h.commits[k - 1], again.tail())
    check_library(h.w / "swap")
    return compare(h.reference, state(h.w, scenario))


def points(h: KillHarness, *names: str) -> list[int]:
    """The commits (1-based) of files of these names in swap/ (the last of each)."""
    out = []
    for name in names:
        hits = [i for i, what in enumerate(h.commits, 1)
                if what in (str(h.w / "swap" / name), f"swap/{name}")]
        assert hits, f"no commit of swap/{name}: {h.commits}"
        out.append(hits[-1])
    return out


def test_a_bare_undo_killed_after_its_commit_is_finished_by_the_rerun(split_dir, tmp_path):
    def build(w: Path) -> None:
        shutil.copytree(split_dir, w / "swap")
        run_cli("consolidate", w / "swap", *CONSOLIDATE)

    scenario = Scenario("bare-undo", build, lambda w: ["undo", "swap"])
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    h.run_reference()
    top, index = points(h, "manifest.json", "index.html")
    assert top < index, "the report is rewritten after the run's commit"
    for k in (top, top + 1, index):
        diffs = kill_at(h, scenario, k)
        assert diffs == [], (k, h.commits[k - 1], diffs[:8])
    # a second bare undo with nothing left is still refused
    again = run_cli("undo", h.w / "swap", check=False)
    assert again.returncode == 2 and "no run left to undo" in again.stderr


def _scores(w: Path) -> None:
    """A scores file of the export written by hand (the scorers are tested in
    test_occlusion.py): every face of faceset_001 masked (quarantined), the best face of
    faceset_000 masked (pruned), the rest clean."""
    swap = (w / "swap").resolve()
    facesets = {}
    for entry in load(swap / "manifest.json")["facesets"]:
        m = load(swap / entry["name"] / "manifest.json")
        faces = sorted(m["faces"], key=lambda f: f["rank"])
        rows = []
        for i, f in enumerate(faces):
            hot = entry["name"] == "faceset_001" or (entry["name"] == "faceset_000" and i == 0)
            rows.append({"file": f["file"], "key": f["key"],
                         "sha256": sha256_file(swap / entry["name"] / f["file"]),
                         "scores": {"mask": 0.95 if hot else 0.05}})
        facesets[entry["name"]] = rows
    write_scores(w / "scores.json", new_scores(str(swap), None, str(w / "q.json"),
                                               [str(w / "r.jsonl")], ["onnx:test"],
                                               facesets, [], []))


def test_occlusion_apply_killed_at_its_commits_keeps_the_applied_plan(split_dir, tmp_path):
    def build(w: Path) -> None:
        shutil.copytree(split_dir, w / "swap")
        _scores(w)

    scenario = Scenario("occlusion-apply", build,
                        lambda w: ["occlusion", "apply", "scores.json"])
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    n = h.run_reference()
    plan = json.loads(plan_path(h.w / "scores.json").read_text())
    assert plan["counts"]["masked"] == 1 and plan["counts"]["pruned_faces"] == 1, plan["counts"]
    assert [m["name"] for m in load(h.w / "swap" / "manifest.json")["masked"]] == \
        ["faceset_001"]
    top, index = points(h, "manifest.json", "index.html")
    for k in sorted({1, n // 2, top - 1, top, index}):
        diffs = kill_at(h, scenario, k)
        assert diffs == [], (k, h.commits[k - 1], diffs[:8])
    # run again, uninterrupted: nothing changes, the plan stays the applied one
    again = run_cli("occlusion", "apply", h.w / "scores.json")
    assert "applied already" in again.stdout
    assert compare(h.reference, state(h.w, scenario)) == []
