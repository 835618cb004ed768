"""extend: a second batch of real photos folded into existing cluster/refine outputs."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import FACES, LOW_GATES, PACK, TEST_THRESHOLD, identity_of, run_cli
from facesets.formats.cache import load_cache

REFINE_ARGS = ["--initial-threshold", TEST_THRESHOLD, "--merge-threshold", "0.5",
               "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES, "--min-faces", "5"]


def _centre_keys(cache_path: Path) -> dict[str, str]:
    """Ground truth: face key -> person, for the face nearest each photo's centre."""
    c = load_cache(cache_path)
    dims = {s: (w, h) for s, w, h in zip(c.files["sha256"].tolist(), c.files["width"].tolist(),
                                         c.files["height"].tolist())}
    path_of = dict(zip(c.files["sha256"].tolist(), c.files["path"].tolist()))
    keys = c.face_keys()
    best: dict[str, tuple[float, str]] = {}
    for k, sha, box in zip(keys.tolist(), c.faces["sha256"].tolist(), c.faces["bbox"]):
        w, h = dims[sha]
        d = np.hypot((box[0] + box[2]) / 2 - w / 2, (box[1] + box[3]) / 2 - h / 2)
        if sha not in best or d < best[sha][0]:
            best[sha] = (d, k)
    return {k: identity_of(path_of[sha]) for sha, (_, k) in best.items()}


def _groups(manifest: dict, kind: str) -> dict[str, set[str]]:
    return {g["name"]: {f["key"] for f in g["faces"]} for g in manifest[kind]}


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def test_extend_keeps_numbering_adds_new_people_and_is_idempotent(tmp_path):
    people = sorted(p.name for p in FACES.iterdir() if p.is_dir())
    old_people, new_people = people[:10], people[10:]
    first, second = tmp_path / "batch1", tmp_path / "batch2"
    for name in people:
        photos = sorted((FACES / name).glob("*.jpg"))
        split = 6 if name in old_people else 0
        for batch, part in ((first, photos[:split]), (second, photos[split:])):
            for p in part:
                (batch / name).mkdir(parents=True, exist_ok=True)
                (batch / name / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (200, 160), (90, 120, 150)).save(second / "blank.jpg")  # no face
    cache, raw, sets = tmp_path / "c.npz", tmp_path / "raw", tmp_path / "sets"
    run_cli("embed", first, cache, *PACK, "--no-progress")
    run_cli("cluster", cache, raw, "--threshold", TEST_THRESHOLD)
    run_cli("refine", cache, sets, *REFINE_ARGS)
    raw0 = json.loads((raw / "manifest.json").read_text())
    sets0 = json.loads((sets / "refine_manifest.json").read_text())
    truth0 = _centre_keys(cache)

    def owners(groups: dict[str, set[str]], truth: dict[str, str]) -> dict[str, str]:
        """Group name -> the person whose centre faces it holds (one person only)."""
        out = {}
        for name, keys in groups.items():
            ids = Counter(truth[k] for k in keys if k in truth)
            assert len(ids) <= 1, f"{name} mixes {dict(ids)}"
            if ids:
                out[name] = next(iter(ids))
        return out

    old_persons = owners(_groups(raw0, "persons"), truth0)
    old_sets = owners(_groups(sets0, "facesets"), truth0)
    assert sorted(old_persons.values()) == old_people == sorted(old_sets.values())

    run_cli("embed", second, cache, *PACK, "--no-progress")
    proc = run_cli("extend", cache, raw, "--refine-out", sets)
    assert f"threshold {TEST_THRESHOLD} (raw manifest)" in proc.stdout
    raw1 = json.loads((raw / "manifest.json").read_text())
    sets1 = json.loads((sets / "refine_manifest.json").read_text())
    truth = _centre_keys(cache)
    new_keys = set(truth) - set(truth0)

    for kind, before, after, old in (("persons", raw0, raw1, old_persons),
                                     ("facesets", sets0, sets1, old_sets)):
        groups0, groups1 = _groups(before, kind), _groups(after, kind)
        # the old numbering is kept: every old group still holds its faces under its name
        for name, keys in groups0.items():
            assert keys <= groups1[name]
        now = owners(groups1, truth)
        assert {n: now[n] for n in old} == old
        # each new photo of a known person joined that person's old group
        by_person = {person: name for name, person in old.items()}
        for k in new_keys:
            if truth[k] in old_people:
                assert k in groups1[by_person[truth[k]]], (kind, truth[k])
        # new people got new numbers past the old maximum, each their own
        new_groups = {n: p for n, p in now.items() if n not in groups0}
        assert sorted(set(new_groups.values())) == new_people
        top = max(int(n.rsplit("_", 1)[1]) for n in groups0)
        assert all(int(n.rsplit("_", 1)[1]) > top for n in new_groups)
        assert len(after["extended"]) == 1
        # no group holds two faces of one photo
        for g in after[kind]:
            shas = [f["sha256"] for f in g["faces"]]
            assert len(shas) == len(set(shas))
        # every listed face's photo is in the group's folder
        root = raw if kind == "persons" else sets
        for g in after[kind]:
            for f in g["faces"]:
                assert all((root / g["name"] / n).is_file() for n in f["files"])
    assert any(e["path"].endswith("blank.jpg") for e in raw1["noface"])
    assert (raw / "_noface").is_dir()

    # a second run changes nothing: same tree, same manifests
    tree = _tree(raw), _tree(sets)
    again = run_cli("extend", cache, raw, "--refine-out", sets)
    assert "0 new faces" in again.stdout and "nothing new" in again.stdout
    assert (_tree(raw), _tree(sets)) == tree
    assert json.loads((raw / "manifest.json").read_text()) == raw1
    assert json.loads((sets / "refine_manifest.json").read_text()) == sets1

    # a folder without a cluster manifest is a clear error
    bad = run_cli("extend", cache, tmp_path / "nowhere", check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error:") and "manifest" in bad.stderr



def test_extend_killed_at_commits_then_rerun_equals_one_clean_extend(tmp_path):
    """kill -9 extend before/after its file commits (each photo placed, each manifest): no
    0-byte photo, no temp file, and the re-run equals an uninterrupted extend."""
    import shutil

    from killpoints import count_commits, run_killed, snapshot, was_killed

    people = sorted(p.name for p in FACES.iterdir() if p.is_dir())[:6]
    first, second = tmp_path / "batch1", tmp_path / "batch2"
    for n, name in enumerate(people):
        photos = sorted((FACES / name).glob("*.jpg"))
        parts = (photos[:6], photos[6:8]) if n < 4 else ([], photos[:3])
        for batch, part in zip((first, second), parts):
            for p in part:
                (batch / name).mkdir(parents=True, exist_ok=True)
                (batch / name / p.name).write_bytes(p.read_bytes())
    cache, raw, sets = tmp_path / "c.npz", tmp_path / "raw", tmp_path / "sets"
    run_cli("embed", first, cache, *PACK, "--no-progress")
    run_cli("cluster", cache, raw, "--threshold", TEST_THRESHOLD)
    run_cli("refine", cache, sets, *REFINE_ARGS)
    run_cli("embed", second, cache, *PACK, "--no-progress")
    pristine = tmp_path / "pristine"
    for d in (raw, sets):
        shutil.copytree(d, pristine / d.name, symlinks=True)

    def restore():
        for d in (raw, sets):
            shutil.rmtree(d)
            shutil.copytree(pristine / d.name, d, symlinks=True)

    extend = ["extend", cache, raw, "--refine-out", sets]
    commits = count_commits(extend)
    clean = snapshot(raw), snapshot(sets)
    assert commits > 10      # photos placed one by one, then two manifests
    points = sorted(set(range(1, commits + 1, 4)) | {commits - 1, commits})
    for n in points:
        for mode in ("before", "after"):
            restore()
            assert was_killed(run_killed(extend, n, mode))
            run_cli(*extend)
            for d in (raw, sets):
                assert not list(d.rglob("*.tmp")), f"temp left, killed {mode} commit {n}"
                assert all(p.stat().st_size for p in d.rglob("*") if p.is_file())
            assert (snapshot(raw), snapshot(sets)) == clean, f"killed {mode} commit {n}"
