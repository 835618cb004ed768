"""calibrate: recovers the folder identities of the test faces; --save feeds later runs."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import FACES, LOW_GATES, copy_cache, run_cli
from facesets.formats.cache import load_cache
from facesets.core.thresholds import MODEL_THRESHOLDS

NAMES = ("cluster", "initial", "merge", "outlier", "swap_outlier", "candidate_match", "extend")


def recommended(stdout: str) -> dict[str, float]:
    line = next(l for l in stdout.splitlines() if l.startswith("calibrate: recommended"))
    return {k: float(v) for k, v in re.findall(r"(\w+) ([0-9.]+)[,;]", line)}


def truth_scores(stdout: str) -> tuple[float, float]:
    line = next(l for l in stdout.splitlines() if l.startswith("truth scores:"))
    pw, bc = re.findall(r"F ([0-9.]+)", line)
    return float(pw), float(bc)


@pytest.fixture(scope="module")
def truth_copy(tmp_path_factory):
    """The test faces' person folders copied elsewhere: matched by content, not path."""
    dest = tmp_path_factory.mktemp("truth") / "sorted"
    shutil.copytree(FACES, dest)
    return dest


def test_calibrate_recovers_the_folder_identities(faces_cache, truth_copy):
    proc = run_cli("calibrate", faces_cache, truth_copy)
    out = proc.stdout
    people = sorted(p.name for p in FACES.iterdir() if p.is_dir())
    assert f"truth: {len(people)} people, 180 images, 180 faces scored" in out
    assert "nearest the centre" in out
    rec = recommended(out)
    assert set(NAMES) <= set(rec)
    # the recommended cluster threshold, used by cluster itself, recovers the folders
    run = run_cli("cluster", faces_cache, truth_copy.parent / "out", "--threshold",
                  rec["cluster"], "--truth", truth_copy)
    pairwise_f, bcubed_f = truth_scores(run.stdout)
    assert pairwise_f >= 0.95 and bcubed_f >= 0.95
    assert "over the 180 of 180 truth faces" in run.stdout
    # and the sweep says so too, while a far too lenient threshold does not
    row = {float(l.split()[0]): l for l in out.splitlines() if re.match(r"\s+[01]\.\d+\s+\d+ ", l)}
    assert float(row[rec["cluster"]].split()[4]) >= 0.95
    assert float(row[1.0].split()[4]) < 0.95


def test_save_then_plain_cluster_and_refine_use_the_saved_thresholds(faces_cache, truth_copy,
                                                                      tmp_path):
    assert "testpack_s" not in MODEL_THRESHOLDS  # else this would not test calibration
    cache = copy_cache(faces_cache, tmp_path)
    plain = run_cli("cluster", cache, tmp_path / "before", check=False)
    assert plain.returncode == 2 and "calibrate" in plain.stderr  # no default yet
    rec = recommended(run_cli("calibrate", cache, truth_copy, "--save").stdout)
    saved = load_cache(cache).meta["thresholds"]
    assert {k: saved[k] for k in NAMES} == {k: rec[k] for k in NAMES}
    run = run_cli("cluster", cache, tmp_path / "raw", "--truth", truth_copy)
    assert f"threshold {saved['cluster']} (calibrated)" in run.stdout
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["parameters"]["threshold"] == saved["cluster"]
    assert min(truth_scores(run.stdout)) >= 0.95
    ref = run_cli("refine", cache, tmp_path / "sets", *LOW_GATES, "--min-faces", "3")
    params = json.loads((tmp_path / "sets" / "refine_manifest.json").read_text())["parameters"]
    assert (params["initial_threshold"], params["merge_threshold"],
            params["outlier_threshold"]) == (saved["initial"], saved["merge"], saved["outlier"])
    assert "facesets" in ref.stdout
    # an explicit flag still wins
    flag = run_cli("cluster", cache, tmp_path / "raw2", "--threshold", "0.5")
    assert "threshold 0.5 (flag)" in flag.stdout


def test_calibrate_bad_truth_root(faces_cache, tmp_path):
    missing = run_cli("calibrate", faces_cache, tmp_path / "nope", check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    (tmp_path / "empty").mkdir()
    empty = run_cli("calibrate", faces_cache, tmp_path / "empty", check=False)
    assert empty.returncode == 2 and "person folders" in empty.stderr
    stranger = tmp_path / "strangers" / "someone"
    stranger.mkdir(parents=True)
    (stranger / "x.jpg").write_bytes(b"not in the cache")
    unknown = run_cli("calibrate", faces_cache, tmp_path / "strangers", check=False)
    assert unknown.returncode == 2 and "embed the truth folders" in unknown.stderr
