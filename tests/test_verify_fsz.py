"""verify-fsz opens bundles as the consumer does: passes on exported bundles, fails on a
bundle holding a two-face PNG or a PNG without a face, refuses unsafe zips."""
from __future__ import annotations

import json
import re
import zipfile

import cv2
import numpy as np
import pytest

from conftest import GROUP, LOW_GATES, PACK, SHARED, TEST_THRESHOLD, run_cli
from facesets.formats.bundle import read_fsz, write_fsz

EXPORT_ARGS = ["--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "40",
               "--model-root", str(SHARED / "insightface"), "--no-progress"]


@pytest.fixture(scope="module")
def small_export(group_cache, tmp_path_factory):
    """export-swap of the first three facesets of the faces + group cache."""
    root = tmp_path_factory.mktemp("verify")
    run_cli("refine", group_cache, root / "facesets", "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES,
            "--min-faces", "5")
    rm = json.loads((root / "facesets" / "refine_manifest.json").read_text())
    rm["facesets"] = rm["facesets"][:3]
    (root / "rm.json").write_text(json.dumps(rm))
    run_cli("export-swap", group_cache, root / "rm.json", root / "swap", *EXPORT_ARGS)
    return root / "swap"


def test_passes_on_every_exported_bundle(small_export):
    r = run_cli("verify-fsz", small_export, *PACK, "--no-progress")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("ok ", "FAIL "))]
    bundles = sorted(small_export.rglob("*.fsz"))
    assert len(lines) == len(bundles) == 6
    for fs in sorted(small_export.glob("faceset_*")):
        m = json.loads((fs / "manifest.json").read_text())
        line = next(ln for ln in lines if m["bundles"]["all"] in ln)
        n = m["bundles"]["all_count"]
        assert line.startswith("ok ") and f": {n} PNGs (1 face: {n})" in line
        sim = float(re.search(r"similarity to centroid ([0-9.]+)", line).group(1))
        assert sim > 0.9   # the consumer's mean lands on the faceset's own centroid
    assert "verify-fsz: 6 of 6 bundles pass" in r.stdout


def test_fails_on_two_face_and_no_face_pngs(small_export, tmp_path):
    fs = sorted(small_export.glob("faceset_*"))[0]
    good = sorted((fs / "faces").glob("*.png"))[:2]
    # a group photo squeezed into a square crop: two faces on one PNG
    couple = cv2.imread(str(GROUP / "face_recognition_obama_and_biden.jpg"))
    two = tmp_path / "two.png"
    cv2.imwrite(str(two), cv2.resize(couple, (512, 512), interpolation=cv2.INTER_AREA))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((512, 512, 3), 128, np.uint8))
    bad = tmp_path / "bad.fsz"
    write_fsz([good[0], two, good[1], blank], bad)
    assert [n for n, _ in read_fsz(bad).pngs] == ["0.png", "1.png", "2.png", "3.png"]
    r = run_cli("verify-fsz", bad, fs / f"{fs.name}_all.fsz", *PACK, "--no-progress",
                check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"FAIL {bad}" in r.stdout and "3.png: 0 faces" in r.stdout
    assert int(re.search(r"1\.png: (\d+) faces", r.stdout).group(1)) >= 2
    assert "0.png" not in r.stdout and "2.png" not in r.stdout   # the good ones pass
    assert "verify-fsz: 1 of 2 bundles pass" in r.stdout
    assert "similarity n/a" in r.stdout    # no faceset manifest beside bad.fsz


def test_refuses_unsafe_or_broken_bundles(tmp_path):
    evil = tmp_path / "evil.fsz"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.png", b"\x89PNG\r\n\x1a\n")
    # a bad bundle fails alone (FAIL line, exit 1); the others are still checked
    r = run_cli("verify-fsz", evil, *PACK, check=False)
    assert r.returncode == 1 and f"FAIL {evil}: " in r.stdout and "unsafe member name" in r.stdout
    assert not (tmp_path.parent / "escape.png").exists()
    junk = tmp_path / "junk.fsz"
    junk.write_bytes(b"not a zip")
    r = run_cli("verify-fsz", junk, evil, *PACK, check=False)
    assert r.returncode == 1 and "not a .fsz bundle" in r.stdout
    assert "verify-fsz: 0 of 2 bundles pass" in r.stdout
    r = run_cli("verify-fsz", tmp_path / "missing.fsz", *PACK, check=False)
    assert r.returncode == 2 and "no such bundle" in r.stderr


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims width x height (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def test_oversized_png_members_are_reported_without_decoding(small_export, tmp_path):
    fs = sorted(small_export.glob("faceset_*"))[0]
    good = sorted((fs / "faces").glob("*.png"))[:2]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(60000, 60000))
    bad = tmp_path / "bomb.fsz"
    write_fsz([good[0], bomb, good[1]], bad)
    r = run_cli("verify-fsz", bad, fs / f"{fs.name}_all.fsz", *PACK, "--no-progress",
                check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert f"{bad}: member 1.png: image too large" in r.stdout
    assert "0.png" not in r.stdout and "2.png" not in r.stdout   # the others are checked
    assert "verify-fsz: 1 of 2 bundles pass" in r.stdout
    # a real PNG above --max-pixels is refused from its header as well
    r = run_cli("verify-fsz", fs / f"{fs.name}_all.fsz", *PACK, "--no-progress",
                "--max-pixels", "1000", check=False)
    assert r.returncode == 1 and "image too large" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("centroid", ["abc", [[1, 2], [3]], {"x": 1}, [float("nan")] * 4])
def test_a_centroid_of_the_wrong_type_is_not_comparable(small_export, tmp_path, centroid):
    import shutil

    fs = sorted(small_export.glob("faceset_*"))[0]
    copy = tmp_path / fs.name
    shutil.copytree(fs, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["centroid"] = centroid
    (copy / "manifest.json").write_text(json.dumps(m))
    r = run_cli("verify-fsz", copy / f"{fs.name}_all.fsz", *PACK, "--no-progress",
                check=False)
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    # n/a with the reason: the manifest and its field named
    assert f"similarity n/a ({copy / 'manifest.json'}: centroid" in r.stdout
