"""export-swap on real photos: one detectable face per PNG, one face per source photo per
faceset, identities kept apart, candidates, and a kill -9 mid-export."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import pytest

from conftest import LOW_GATES, ROOT, SHARED, TEST_THRESHOLD, identity_of, run_cli
from facesets.formats.bundle import read_fsz

REFINE_ARGS = ["--initial-threshold", TEST_THRESHOLD, "--merge-threshold", "0.5",
               "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES, "--min-faces", "5"]
# the LFW faces are 60-110 px: the 100 px gate lowered for them
EXPORT_ARGS = ["--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "40",
               "--model-root", str(SHARED / "insightface"), "--no-progress"]


@pytest.fixture(scope="module")
def detector():
    from facesets.backends import load_backend
    return load_backend("testpack_s", str(SHARED / "insightface"), None, 640,
                        with_recognition=False)


@pytest.fixture(scope="module")
def refined(group_cache, tmp_path_factory):
    """refine + cluster outputs of the faces + group cache."""
    root = tmp_path_factory.mktemp("refined")
    run_cli("refine", group_cache, root / "facesets", *REFINE_ARGS)
    run_cli("cluster", group_cache, root / "raw", "--threshold", TEST_THRESHOLD)
    return root


@pytest.fixture(scope="module")
def exported(group_cache, refined, tmp_path_factory):
    out = tmp_path_factory.mktemp("swap") / "swap_ready"
    run_cli("export-swap", group_cache, refined / "facesets" / "refine_manifest.json", out,
            *EXPORT_ARGS)
    return out


def faceset_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name.startswith("faceset_")
                  and not p.name.endswith(".old"))


def load(p: Path) -> dict:
    return json.loads(p.read_text(encoding="utf-8"))


def assert_consistent(fs: Path) -> dict:
    """A faceset folder is whole: its manifest names exactly the PNGs in faces/, and both
    bundles hold those PNGs byte for byte in rank order."""
    m = load(fs / "manifest.json")
    files = sorted(p.name for p in (fs / "faces").iterdir() if p.is_file())
    assert files == sorted(Path(f["file"]).name for f in m["faces"])
    assert [f["rank"] for f in m["faces"]] == list(range(len(m["faces"])))
    pngs = [(fs / f["file"]).read_bytes() for f in m["faces"]]
    all_b = [d for _, d in read_fsz(fs / m["bundles"]["all"]).pngs]
    top_b = [d for _, d in read_fsz(fs / m["bundles"]["top"]).pngs]
    assert all_b == pngs
    assert top_b == pngs[:m["top_n"]]
    assert sorted(p.name for p in fs.glob("*.fsz")) == sorted(
        [m["bundles"]["all"], m["bundles"]["top"]])
    assert (fs / "NAME.txt").is_file() and (fs / "previews" / "top_grid.jpg").is_file()
    return m


def tree_digest(out: Path) -> dict[str, str]:
    """Every file under OUT (NAME.txt and manifests aside) -> sha256; manifests compared
    without their timestamps."""
    res = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(out))
        if p.name == "manifest.json":
            m = load(p)
            for k in ("created", "run"):
                m.pop(k, None)
            m.get("summary", {}).pop("seconds", None)
            m.get("parameters", {}).pop("refine_manifest", None)
            res[rel] = json.dumps(m, sort_keys=True)
        else:
            res[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return res


def test_every_png_has_one_face_and_identities_stay_apart(exported, detector):
    top = load(exported / "manifest.json")
    assert top["format"] == "face-sets/swap" and len(top["facesets"]) == 20
    assert all(top[k] == [] for k in ("masked", "thin_eras", "merged"))
    blanked = 0
    for fs in faceset_dirs(exported):
        m = assert_consistent(fs)
        ids = Counter(identity_of(f["path"]) for f in m["faces"])
        assert len(ids) == 1, f"{fs.name} mixes identities: {ids}"
        assert len({f["sha256"] for f in m["faces"]}) == len(m["faces"])
        scores = [f["score"] for f in m["faces"]]
        assert scores == sorted(scores, reverse=True)
        for f in m["faces"]:
            img = cv2.imread(str(fs / f["file"]))
            assert img.shape == (512, 512, 3)
            assert len(detector.detect(img)) == 1, f"{fs.name}/{f['file']}"
            assert all(0 <= v <= 1 for v in f["quality"].values())
            blanked += bool(f["crop"]["blanked"])
    # LFW photos show people in the background: the guard must have painted some out
    assert blanked > 0


def test_group_photos_one_face_per_source(group_cache, refined, tmp_path, detector):
    """A faceset fed every face of the group photos (all of them on purpose, several per
    photo): at most one face per source photo is exported and each PNG has one face."""
    raw = load(refined / "raw" / "manifest.json")
    group_faces = [e for c in raw["persons"] + [{"faces": raw["singletons"]}]
                   for e in c["faces"] if "/group/" in e["path"]]
    per_photo = Counter(e["sha256"] for e in group_faces)
    assert max(per_photo.values()) >= 2
    manifest = load(refined / "facesets" / "refine_manifest.json")
    manifest["facesets"] = [{"name": "faceset_000", "faces": group_faces}]
    rm = tmp_path / "refine_manifest.json"
    rm.write_text(json.dumps(manifest))
    out = tmp_path / "swap"
    run_cli("export-swap", group_cache, rm, out, *EXPORT_ARGS[:-1], "--swap-outlier-threshold",
            "2.0", "--no-progress")
    m = assert_consistent(out / "faceset_000")
    kept = [f["sha256"] for f in m["faces"]]
    assert len(kept) == len(set(kept)) and kept
    reasons = Counter(d["reason"] for d in m["dropped"])
    assert reasons["same_source"] >= sum(n - 1 for n in per_photo.values()) - reasons["small"]
    for f in m["faces"]:
        img = cv2.imread(str(out / "faceset_000" / f["file"]))
        assert len(detector.detect(img)) == 1, f["file"]
    assert any(f["crop"]["blanked"] or f["crop"]["pad_ratio"] < 0.5 for f in m["faces"])


def test_candidates_go_to_their_faceset(group_cache, refined, tmp_path):
    """Faces taken out of their faceset and listed as raw singletons come back as
    candidates for the faceset of their own identity."""
    _, rm = trimmed_refine(refined, tmp_path, 4)
    raw = load(refined / "raw" / "manifest.json")
    taken_out = {}
    for fs in rm["facesets"]:
        face = fs["faces"].pop(0)
        taken_out[face["key"]] = identity_of(face["path"])
    keyset = set(taken_out)
    for p in raw["persons"]:
        moved = [e for e in p["faces"] if e["key"] in keyset]
        p["faces"] = [e for e in p["faces"] if e["key"] not in keyset]
        raw["singletons"] += moved
    (tmp_path / "rm.json").write_text(json.dumps(rm))
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    out = tmp_path / "swap"
    run_cli("export-swap", group_cache, tmp_path / "rm.json", out, *EXPORT_ARGS,
            "--candidates", "--raw-manifest", tmp_path / "raw.json",
            "--candidate-match-threshold", TEST_THRESHOLD, "--candidate-min-score", "0")
    top = load(out / "manifest.json")
    found = {}
    for target, entries in top["candidates"]["to"].items():
        ident = Counter(identity_of(f["path"]) for f in
                        load(out / target / "manifest.json")["faces"]).most_common(1)[0][0]
        for e in entries:
            assert (out / "_candidates" / f"to_{target}" / e["file"]).is_file()
            if e["key"] in keyset:
                found[e["key"]] = ident
    assert found == taken_out


def trimmed_refine(refined: Path, dest: Path, n: int) -> tuple[Path, dict]:
    """The refine manifest cut to its first ``n`` facesets (smaller, faster exports)."""
    rm = load(refined / "facesets" / "refine_manifest.json")
    rm["facesets"] = rm["facesets"][:n]
    path = dest / f"refine_{n}.json"
    path.write_text(json.dumps(rm))
    return path, rm


def _start_export(cache, rm, out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "sort_faces.py"), "export-swap",
                             str(cache), str(rm), str(out), *EXPORT_ARGS, *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_mid_export_leaves_out_consistent_and_rerun_equals_clean(
        group_cache, refined, tmp_path):
    rm, _ = trimmed_refine(refined, tmp_path, 6)
    clean = tmp_path / "clean"
    # OUT's library remembers the older export's sizes: the new ones are passed (both runs)
    sizes = ["--out-size", "512", "--top-n", "30"]
    run_cli("export-swap", group_cache, rm, clean, *EXPORT_ARGS, *sizes)
    out = tmp_path / "swap"
    # an older export with other settings: after the kill each faceset must be wholly old
    # or wholly new
    run_cli("export-swap", group_cache, rm, out, *EXPORT_ARGS, "--out-size", "256",
            "--top-n", "5")
    (out / "faceset_003" / "NAME.txt").write_text("Operator's name\n", encoding="utf-8")
    proc = _start_export(group_cache, rm, out, *sizes)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:   # kill while crops are being staged
        if any(out.glob(".faceset_*.facesets-*/faceset_*/faces/tmp_*.png")):
            break
        time.sleep(0.02)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for fs in faceset_dirs(out):
        m = assert_consistent(fs)
        size = m["parameters"]["out_size"]
        assert all(cv2.imread(str(fs / f["file"])).shape[0] == size for f in m["faces"])
    top = load(out / "manifest.json")
    assert all((out / e["manifest"]).is_file() for e in top["facesets"])
    # the re-run completes and equals a clean run; the operator's NAME.txt survives
    run_cli("export-swap", group_cache, rm, out, *EXPORT_ARGS, *sizes)
    assert not list(out.glob(".*"))
    assert (out / "faceset_003" / "NAME.txt").read_text(encoding="utf-8") == "Operator's name\n"
    (out / "faceset_003" / "NAME.txt").write_text(
        (clean / "faceset_003" / "NAME.txt").read_text(encoding="utf-8"), encoding="utf-8")
    run_cli("report", out)                 # index.html shows NAME.txt: as the clean one now
    assert tree_digest(out) == tree_digest(clean)


def test_bad_input_is_one_clear_error(group_cache, refined, tmp_path):
    rm = refined / "facesets" / "refine_manifest.json"
    r = run_cli("export-swap", group_cache, refined / "raw" / "manifest.json", tmp_path / "o",
                *EXPORT_ARGS, check=False)
    assert r.returncode == 2 and "not a face-sets/refine manifest" in r.stderr
    r = run_cli("export-swap", group_cache, rm, tmp_path / "o", *EXPORT_ARGS, "--candidates",
                check=False)
    assert r.returncode == 2 and "--raw-manifest" in r.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.txt").write_text("not ours")
    r = run_cli("export-swap", group_cache, rm, mine, *EXPORT_ARGS, check=False)
    assert r.returncode == 2 and "not made by face-sets" in r.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["holiday.txt"]
