"""calibrate: recovers the folder identities of the test faces; --save feeds later runs."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import FACES, LOW_GATES, ROOT, copy_cache, run_cli
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


def test_a_small_truth_set_sets_no_outlier_gate_and_says_so(group_cache, tmp_path):
    """Issue 22 item 5: 4 people x 5 photos are too few for a 99th percentile; calibrate
    warns and neither recommends nor saves an outlier gate. Issue 23: the library is the
    whole cache (the test faces and the group photos), not the truth set; its predicted
    precision is printed beside the truth set's figures."""
    truth = tmp_path / "few"
    for person in sorted(p for p in FACES.iterdir() if p.is_dir())[:4]:
        (truth / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:5]:
            shutil.copy2(photo, truth / person.name / photo.name)
    cache = copy_cache(group_cache, tmp_path)
    before = dict(load_cache(cache).meta.get("thresholds") or {})
    out = run_cli("calibrate", cache, truth, "--save").stdout
    assert "truth: 4 people, 20 images" in out
    assert "WARNING: the truth set is too small to set an outlier gate" in out
    rec = recommended(out)
    assert "outlier" not in rec and "swap_outlier" not in rec and "cluster" in rec
    meta = load_cache(cache).meta
    assert "outlier" not in meta["thresholds"] and "swap_outlier" not in meta["thresholds"]
    assert before.get("outlier") is None
    from facesets.core.selection import select_faces
    library = len(select_faces(load_cache(cache)))
    assert library > 20 + 40    # the group photos are in the library, not in the truth set
    assert "library P (predicted)" in out
    assert re.search(rf"predicted P [01]\.\d{{4}} at the library's {library} faces", out), out
    scale = meta["calibration"]["scale"]
    # 20 truth faces, 5 per person: 190 pairs, 40 of them within a person
    assert scale["library_faces"] == library and scale["pairs"] == 190 - 4 * 10
    assert 0.9 <= meta["calibration"]["library_precision"] <= 1.0


# ---- the library-scale model (core/scale.py) ------------------------------------------------

@pytest.mark.unit
def test_the_stranger_tail_counts_cross_person_pairs_exactly_and_extrapolates_below():
    import numpy as np
    from facesets.core.scale import TAIL_PAIRS, stranger_tail
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    labels = rng.integers(0, 30, 300)
    grid = [0.5, 0.7, 0.9, 1.0]
    tail = stranger_tail(x, labels, grid)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = 1 - u @ u.T
    i, j = np.triu_indices(300, 1)
    cross = d[i, j][labels[i] != labels[j]]
    assert tail.pairs == len(cross)
    assert list(tail.counts) == [int(np.sum(cross <= t)) for t in grid]
    assert np.allclose(tail.lowest, np.sort(cross)[:TAIL_PAIRS], atol=1e-6)
    # measured above the tail's top, an exponential below it: monotone, and at the top the
    # two agree
    top = float(tail.lowest[-1])
    assert tail.probability(1.0) == pytest.approx(np.mean(cross <= 1.0), rel=1e-3)
    below = [tail.probability(top - k * 0.05) for k in range(4)]
    assert below == sorted(below, reverse=True) and below[0] == pytest.approx(
        TAIL_PAIRS / tail.pairs)
    assert tail.record()["tail_pairs"] == TAIL_PAIRS


@pytest.mark.unit
def test_predicted_precision_falls_as_the_library_grows():
    """The same stranger tail and the same share of same-person links per face: more faces,
    more strangers per person, lower precision (the issue's 52 people -> 2,325 people)."""
    import numpy as np
    from facesets.core.scale import StrangerTail, predicted_precision
    tail = StrangerTail(pairs=10**6, lowest=np.linspace(0.55, 0.65, 50),
                        at=np.array([0.6, 0.65, 0.7]), counts=np.array([25, 50, 400]))
    small, large = (predicted_precision(tail, n, 3 * n, 0.625) for n in (1_000, 10_000))
    assert 0.99 < small <= 1.0 and large < small
    assert predicted_precision(tail, 10_000, 30_000, 0.5) > large   # stricter: fewer strangers


def test_a_grown_library_warns_that_the_calibrated_threshold_has_drifted(tmp_path):
    """Issue 23: calibrate --save records the stranger tail; once the library has grown, a
    later cluster / run predicts the precision again at the saved threshold and warns when it
    fell below the target (synthetic identities, bench/synth.py, as the cache's faces)."""
    import sys

    import numpy as np
    sys.path.insert(0, str(ROOT / "bench"))
    import synth
    from synthetic_cache import synthetic_cache

    from facesets.core.scale import stranger_tail
    from facesets.steps.calibrate import drift_warning

    x, labels = synth.generate(3000, seed=3)
    cache = synthetic_cache(len(x), seed=1)
    cache.faces["embedding"] = x.astype(np.float32)
    tail = stranger_tail(x[:400], labels[:400], [0.5, 0.75])

    def saved(t: float, library: int) -> None:
        cache.meta["calibration"] = {"truth_root": "/sorted", "scale": {
            "cluster": t, "stranger_p": tail.probability(t), "library_faces": library,
            "target_precision": 0.995, "library_precision": 0.999}}

    saved(0.75, 300)   # lenient, calibrated on a tenth of today's library
    said = drift_warning(cache, "lib.npz", 0.75)
    assert said and "grown from 300 to 3000 faces" in said, said
    assert "re-run `sort_faces.py calibrate lib.npz /sorted --save`" in said
    assert drift_warning(cache, "lib.npz", 0.6) is None       # not the calibrated value
    saved(0.5, 300)    # strict: few strangers that close, still fine
    assert drift_warning(cache, "lib.npz", 0.5) is None
    saved(0.75, 2900)  # grown by under 10%: not checked
    assert drift_warning(cache, "lib.npz", 0.75) is None
    cache.meta["calibration"]["scale"]["stranger_p"] = float("nan")   # tampered: named
    from facesets.formats.cache import CacheError
    with pytest.raises(CacheError, match="meta.calibration.scale.stranger_p"):
        saved_nan = dict(cache.meta["calibration"]["scale"], library_faces=10)
        cache.meta["calibration"]["scale"] = saved_nan
        drift_warning(cache, "lib.npz", 0.75)
