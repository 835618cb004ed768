"""Identity operations on a real swap-ready folder: consolidate, history, undo, and the
undoable audit-multiface apply. After every command a walker checks that every path a
manifest names exists and every PNG on disk is named exactly once."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FACES, LOW_GATES, PACK, TEST_THRESHOLD, run_cli
from killharness import KILLED, KillHarness, Scenario, compare, sample_points, state
from library_check import check_library, load

PEOPLE, PER_PERSON = 3, 6
# testpack_s has no built-in consolidate thresholds: the test threshold groups (similarity
# 0.35); the halves of one person are ~0.87 alike, two people below 0.12
CONSOLIDATE = ["--group-threshold", TEST_THRESHOLD, "--merge-threshold", "0.5"]


def build_split(root: Path) -> Path:
    """A swap-ready folder of 3 people where the first is exported as two facesets (its
    refine entry split in halves): faceset_000 and faceset_003 are one person."""
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
    m = json.loads((root / "refined" / "refine_manifest.json").read_text())
    first = m["facesets"][0]
    half = len(first["faces"]) // 2
    m["facesets"] = [dict(first, faces=first["faces"][:half], face_count=half)] \
        + m["facesets"][1:] + [dict(first, name=f"faceset_{len(m['facesets']):03d}",
                                    faces=first["faces"][half:],
                                    face_count=len(first["faces"]) - half)]
    (root / "split.json").write_text(json.dumps(m))
    out = root / "swap"
    run_cli("export-swap", cache, root / "split.json", out, "--swap-outlier-threshold",
            TEST_THRESHOLD, "--min-face-short", "20", *PACK, "--no-progress")
    return out


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """Read-only: copy it before changing it."""
    return build_split(tmp_path_factory.mktemp("identity"))


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def without_runs(top: dict) -> dict:
    return {k: v for k, v in top.items() if k != "runs"}


def test_consolidate_merges_one_person_leaves_strangers_and_undo_restores(split_dir, tmp_path):
    out = tmp_path / "swap"
    shutil.copytree(split_dir, out)
    check_library(out)
    before = tree(out)
    top0 = load(out / "manifest.json")
    assert [e["name"] for e in top0["facesets"]] == [f"faceset_{i:03d}" for i in range(4)]

    dry = run_cli("consolidate", out, *CONSOLIDATE, "--dry-run")
    assert "merge into faceset_000: faceset_003" in dry.stdout, dry.stdout
    assert "nothing changed" in dry.stdout and tree(out) == before

    run_cli("consolidate", out, *CONSOLIDATE)
    check_library(out)
    top = load(out / "manifest.json")
    assert [e["name"] for e in top["facesets"]] == ["faceset_000", "faceset_001", "faceset_002"]
    surv = load(out / "faceset_000" / "manifest.json")
    gone = load(out / "_merged" / "faceset_003" / "manifest.json")
    old3 = load(split_dir / "faceset_003" / "manifest.json")
    old0 = load(split_dir / "faceset_000" / "manifest.json")
    assert len(surv["faces"]) == len(old0["faces"]) + len(old3["faces"])
    assert {f["key"] for f in surv["faces"]} == {f["key"] for f in old0["faces"] + old3["faces"]}
    scores = [f["score"] for f in sorted(surv["faces"], key=lambda f: f["rank"])]
    assert scores == sorted(scores, reverse=True), "re-ranked by score"
    # the merged PNGs are the same bytes, renamed into the survivor
    for old, new in gone["merged_into"]["files"].items():
        assert (out / "faceset_000" / new).read_bytes() == \
            (split_dir / "faceset_003" / old).read_bytes()
    assert gone["faces"] == [] and gone["merged_into"]["faceset"] == "faceset_000"
    rec = top["merged"][-1]
    assert rec["survivor"] == "faceset_000" and rec["merged"][0]["name"] == "faceset_003"
    assert rec["merged"][0]["similarity"] >= 0.5
    # two different people are never merged: their files did not change
    after = tree(out)
    for name in ("faceset_001", "faceset_002"):
        assert {k: v for k, v in after.items() if k.startswith(name)} == \
            {k: v for k, v in before.items() if k.startswith(name)}
    # a second consolidate finds nothing more
    again = run_cli("consolidate", out, *CONSOLIDATE)
    assert "nothing changed" in again.stdout and len(load(out / "manifest.json")["runs"]) == 1

    hist = run_cli("history", out)
    run_id = top["runs"][0]["id"]
    assert run_id in hist.stdout and "consolidate" in hist.stdout and "in effect" in hist.stdout

    run_cli("undo", out)
    check_library(out)
    restored = tree(out)
    assert {k: v for k, v in restored.items() if not k.startswith(".runs/")
            and k != "manifest.json"} == {k: v for k, v in before.items()
                                          if k != "manifest.json"}
    top_after = load(out / "manifest.json")
    assert without_runs(top_after) == without_runs(top0)
    runs = top_after["runs"]
    assert runs[0]["undone_by"] == runs[1]["id"] and runs[1]["undoes"] == run_id
    assert f"undone by {runs[1]['id']}" in run_cli("history", out).stdout
    nothing = run_cli("undo", out, check=False)
    assert nothing.returncode == 2 and "no run left to undo" in nothing.stderr
    # it points at the list of runs in today's spelling, a command that runs as given
    see = re.search(r"\(see `(library history [^`]+)`\)", nothing.stderr)
    assert see and Path(see.group(1).split()[2]).resolve() == out.resolve(), nothing.stderr
    assert f"undone by {runs[1]['id']}" in run_cli(*see.group(1).split()).stdout
    assert "undone already" in run_cli("undo", out, run_id).stdout
    assert without_runs(load(out / "manifest.json")) == without_runs(top0)


def test_undo_refuses_a_run_whose_files_were_moved_since(split_dir, tmp_path):
    out = tmp_path / "swap"
    shutil.copytree(split_dir, out)
    run_cli("consolidate", out, *CONSOLIDATE)
    moved = next((out / "faceset_000" / "faces").glob("*.png"))
    merged = load(out / "_merged" / "faceset_003" / "manifest.json")["merged_into"]["files"]
    victim = out / "faceset_000" / next(iter(merged.values()))
    victim.rename(tmp_path / "elsewhere.png")
    r = run_cli("undo", out, check=False)
    assert r.returncode == 2 and "cannot undo" in r.stderr and victim.name in r.stderr
    assert moved.exists() and (out / "_merged" / "faceset_003").is_dir(), "nothing undone"


def test_a_bad_run_record_is_one_clear_error(split_dir, tmp_path):
    out = tmp_path / "swap"
    shutil.copytree(split_dir, out)
    run_cli("consolidate", out, *CONSOLIDATE)
    run_id = load(out / "manifest.json")["runs"][0]["id"]
    rec_path = out / ".runs" / run_id / "run.json"
    good = rec_path.read_bytes()
    rec = load(rec_path)
    rec["moves"][0]["to"] = "../../outside.png"
    rec_path.write_text(json.dumps(rec))
    r = run_cli("undo", out, check=False)
    assert r.returncode == 2 and "run.json" in r.stderr and "moves[0].to" in r.stderr
    # a kept manifest naming a face outside its folder: refused before anything moves
    rec_path.write_bytes(good)
    kept = out / ".runs" / run_id / "before" / "faceset_000" / "manifest.json"
    m = load(kept)
    m["faces"][0]["file"] = "../../evil.png"
    kept.write_text(json.dumps(m))
    state_before = tree(out)
    r = run_cli("undo", out, check=False)
    assert r.returncode == 2 and "faces[0].file" in r.stderr and str(kept) in r.stderr
    assert tree(out) == state_before


def test_audit_apply_records_a_run_that_undo_reverses(split_dir, tmp_path):
    """audit-multiface apply with results written by hand (the worker is tested in
    test_audit.py): one PNG reported with 2 faces is dropped, then undone byte for byte."""
    out = tmp_path / "swap"
    shutil.copytree(split_dir, out)
    before = tree(out)
    top0 = load(out / "manifest.json")
    queue, results = tmp_path / "mq.json", tmp_path / "mres.jsonl"
    run_cli("audit-multiface", "stage", out, queue, *PACK)
    items = load(queue)["items"]
    with results.open("w") as fh:
        for i, it in enumerate(items):
            n = 2 if i == 1 else 1
            fh.write(json.dumps({"id": it["id"], "path": it["path"], "faces": n,
                                 "scores": [0.9] * n}) + "\n")
    run_cli("audit-multiface", "apply", queue, results)
    check_library(out)
    top = load(out / "manifest.json")
    assert top["runs"][0]["step"] == "audit-multiface" and top["runs"][0]["moves"] == 1
    assert items[1]["id"] in (out / ".runs" / top["runs"][0]["id"] / "run.json").read_text()
    run_cli("undo", out)
    check_library(out)
    restored = tree(out)
    assert {k: v for k, v in restored.items() if not k.startswith(".runs/")
            and k != "manifest.json"} == {k: v for k, v in before.items()
                                          if k != "manifest.json"}
    assert without_runs(load(out / "manifest.json")) == without_runs(top0)
    # the same results again: refused (their run was undone), nothing changed
    again = run_cli("audit-multiface", "apply", queue, results, check=False)
    assert again.returncode == 2 and "stage the audit again" in again.stderr
    assert without_runs(load(out / "manifest.json")) == without_runs(top0)


@pytest.mark.unit
def test_complete_linkage_never_chains_look_alikes():
    """A~B and B~C above the group similarity, A~C far below: complete linkage keeps A and C
    apart (single linkage would chain all three)."""
    from facesets.steps.consolidate import complete_linkage_groups

    def unit(deg):
        return [np.cos(np.radians(deg)), np.sin(np.radians(deg)), 0.0]
    # similarities: A-B cos 50 = 0.64, B-C 0.64, A-C cos 100 = -0.17; D far from all
    c = np.array([unit(0), unit(50), unit(100), [0.0, 0.0, 1.0]])
    groups = complete_linkage_groups(c, 0.45)
    assert all(not {0, 2} <= set(g) for g in groups)
    assert groups == [[0, 1]] or groups == [[1, 2]]
    assert complete_linkage_groups(c, 1.2) == [[0, 1, 2]] or \
        complete_linkage_groups(c, 1.2) == [[0, 1, 2, 3]]


def _kill_and_rerun(h: KillHarness, scenario: Scenario, points) -> None:
    """kill -9 at each commit in ``points``: the folder still loads (history), a re-run
    finishes it, and the result equals the uninterrupted run."""
    for k in points:
        h.reset()
        first = h.run(kill_at=k, tag=f"kill{k}")
        assert first.rc == KILLED, (k, first.tail())
        hist = run_cli("history", h.w / "swap")
        assert "history:" in hist.stdout
        again = h.run(tag=f"rerun{k}")
        assert again.rc == 0, (k, again.tail())
        check_library(h.w / "swap")
        diffs = compare(h.reference, state(h.w, scenario))
        assert diffs == [], (k, h.commits[k - 1], diffs[:12], len(diffs))


@pytest.mark.unit
def test_thresholds_come_from_the_table_the_calibration_or_the_flag():
    from facesets.core.thresholds import ThresholdError, derived, resolve_with_source

    buffalo = {"model": "buffalo_l"}
    assert resolve_with_source("consolidate_group", buffalo, None,
                               derived("consolidate_group", buffalo)) == (0.45, "model default")
    cal = {"model": "testpack_s", "thresholds": {"cluster": 0.66}}
    assert resolve_with_source("consolidate_merge", cal, None,
                               derived("consolidate_merge", cal)) == \
        (0.42, "derived from calibrated cluster")
    assert resolve_with_source("dedup_near", cal, 0.1, derived("dedup_near", cal))[0] == 0.1
    with pytest.raises(ThresholdError, match="--group-threshold"):
        resolve_with_source("consolidate_group", {"model": "testpack_s"}, None,
                            derived("consolidate_group", {"model": "testpack_s"}))


def test_kill_at_sampled_commits_of_consolidate_loads_and_a_rerun_finishes(split_dir, tmp_path):
    scenario = Scenario("consolidate", lambda w: shutil.copytree(split_dir, w / "swap"),
                        lambda w: ["consolidate", "swap", *CONSOLIDATE])
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    n = h.run_reference()
    assert n >= 6, h.commits
    check_library(h.w / "swap")
    _kill_and_rerun(h, scenario, sample_points(h.commits, 6))   # a spread, each kind


def _consolidated(split_dir: Path, w: Path) -> None:
    shutil.copytree(split_dir, w / "swap")
    run_cli("consolidate", w / "swap", *CONSOLIDATE)


@pytest.mark.parametrize("name,build,argv", [
    # the run named: a re-run after the kill came after the last commit says "undone already"
    ("undo", _consolidated,
     lambda w: ["undo", "swap", load(w / "swap" / "manifest.json")["runs"][0]["id"]]),
    ("dedup-optimize", lambda d, w: shutil.copytree(d, w / "swap"),
     lambda w: ["dedup-optimize", "swap", "--near-threshold", "0.25"]),
])
def test_kill_undo_and_dedup_optimize_at_sampled_commits(split_dir, tmp_path, name, build,
                                                         argv):
    scenario = Scenario(name, lambda w: build(split_dir, w), argv)
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    h.run_reference()
    check_library(h.w / "swap")
    _kill_and_rerun(h, scenario, sample_points(h.commits, 4))


def _best_face(library: Path, faceset: str) -> str:
    """The file of a faceset's best-ranked face, read from the pristine library (a re-run
    after a kill must name the same face, even if the killed run already moved it)."""
    m = load(library / faceset / "manifest.json")
    return sorted(m["faces"], key=lambda f: f["rank"])[0]["file"]


def _last_faceset(library: Path) -> str:
    """The other half of faceset_000's person (build_split puts it last)."""
    return load(library / "manifest.json")["facesets"][-1]["name"]


@pytest.mark.parametrize("name,argv", [
    ("rename", lambda d: ["rename", "swap", "faceset_001", "Somebody"]),
    ("drop-faces", lambda d: ["drop-faces", "swap", "faceset_000",
                              _best_face(d, "faceset_000")]),
    ("move-face", lambda d: ["move-face", "swap", "faceset_000", _best_face(d, "faceset_000"),
                             "--into", _last_faceset(d)]),
    ("quarantine", lambda d: ["quarantine", "swap", "faceset_001"]),
])
def test_kill_rename_drop_move_and_quarantine_at_sampled_commits(split_dir, tmp_path, name,
                                                                 argv):
    args = argv(split_dir)
    scenario = Scenario(name, lambda w: shutil.copytree(split_dir, w / "swap"),
                        lambda w: args)
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    n = h.run_reference()
    assert n >= 2, h.commits
    check_library(h.w / "swap")
    _kill_and_rerun(h, scenario, sample_points(h.commits, 4))


def test_dedup_optimize_drops_identical_and_near_duplicates_and_undo_restores(
        split_dir, tmp_path):
    from facesets.formats.cache import load_cache
    from facesets.formats.manifest import write_manifest
    from facesets.formats.swapset import write_bundles, write_previews

    out = tmp_path / "swap"
    shutil.copytree(split_dir, out)
    # the same PNG in two facesets (as when one photo fed both)
    a, b = out / "faceset_000" / "faces" / "000.png", out / "faceset_001" / "faces" / "002.png"
    shutil.copy2(a, b)
    m = load(out / "faceset_001" / "manifest.json")
    write_bundles(out / "faceset_001", m)           # the library agrees with its disk
    write_manifest(out / "faceset_001" / "manifest.json", m)
    write_previews(out / "faceset_001", m)          # and its grid shows that face
    run_cli("report", out)                          # and its index.html shows that disk
    check_library(out)
    before = tree(out)
    top0 = load(out / "manifest.json")
    near = 0.25   # testpack_s: a few faces of one person are this alike (similarity 0.75)
    dry = run_cli("dedup-optimize", out, "--near-threshold", near, "--dry-run")
    assert "nothing changed" in dry.stdout and tree(out) == before
    run_cli("dedup-optimize", out, "--near-threshold", near)
    check_library(out)
    sets = {n: load(out / n / "manifest.json") for n in ("faceset_000", "faceset_001",
                                                          "faceset_002")}
    score = {n: {f["file"]: f["score"] for f in load(split_dir / n / "manifest.json")["faces"]}
             for n in sets}
    ident = [(n, d) for n, m in sets.items() for d in m["dropped"]
             if d["reason"] == "dedup_identical"]
    assert len(ident) == 1
    loser = ident[0][0] + "/" + ident[0][1]["file"]
    pair = {"faceset_000/faces/000.png", "faceset_001/faces/002.png"}
    assert loser in pair and ident[0][1]["duplicate_of"] in pair - {loser}
    s = {p: score[p.split("/")[0]][p.split("/", 1)[1]] for p in pair}
    assert s[loser] <= s[ident[0][1]["duplicate_of"]], "the best-scoring copy stays"
    # near duplicates: each dropped one is that alike to a better face kept in its faceset;
    # the faces kept in a faceset are pairwise less alike
    cache = load_cache(split_dir.parent / "c.npz")
    keys = list(cache.face_keys())
    emb = cache.faces["embedding"] / np.linalg.norm(cache.faces["embedding"], axis=1)[:, None]
    vec = {k: emb[i] for i, k in enumerate(keys)}
    n_near = 0
    for name, m in sets.items():
        kept = [f for f in m["faces"] if f["key"] in vec]
        for i, f in enumerate(kept):
            for g in kept[i + 1:]:
                assert float(vec[f["key"]] @ vec[g["key"]]) < 1 - near
        by_file = {f["file"]: f for f in m["faces"]}
        for d in m["dropped"]:
            if d["reason"] != "dedup_near":
                continue
            n_near += 1
            other = by_file[d["duplicate_of"].split("/", 1)[1]]
            assert float(vec[d["key"]] @ vec[other["key"]]) >= 1 - near
            assert other["score"] >= d["score"]
    assert n_near >= 1
    run_cli("undo", out)
    check_library(out)
    assert {k: v for k, v in tree(out).items() if not k.startswith(".runs/")
            and k != "manifest.json"} == {k: v for k, v in before.items()
                                          if k != "manifest.json"}
    assert without_runs(load(out / "manifest.json")) == without_runs(top0)
