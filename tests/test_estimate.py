"""Thresholds estimated from the cache itself (issue 15, "any model on the first try"): the
README's quick start on the test photos works in one attempt with the test pack, which has no
built-in thresholds; an estimate that cannot be trusted is refused in one message asking for
calibrate; a recorded estimate is validated on every read."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FACES, ROOT, SHARED, identity_of, needs_shared, run_cli


def readme_test_photos_command() -> list[str]:
    """The README's quick-start command for the test photos, as a user would paste it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in quick.splitlines() if ln.startswith("./face-sets run ../shared")]
    assert len(lines) == 1, "the Quick start shows one command for the test photos"
    return shlex.split(lines[0])


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """The README's command run once, as written, on a copy of the test photos (./face-sets
    is `python sort_faces.py` in its venv; the bootstrap has its own test)."""
    needs_shared()
    root = tmp_path_factory.mktemp("quick_start")
    photos = root / "faces"
    shutil.copytree(FACES, photos)
    argv = readme_test_photos_command()
    assert argv[:2] == ["./face-sets", "run"]
    args = [str(photos) if a == "../shared/testdata/faces" else
            a.replace("../shared", str(SHARED)) for a in argv[2:]]
    args = [str(root / "out") if a == "work/out" else a for a in args]
    work = root / "work"   # the default cache work/cache/faces.npz goes here, not in the repo
    r = run_cli("run", *args, "--no-progress", check=False,
                env={"FACESETS_WORK_DIR": str(work)})
    return {"proc": r, "out": root / "out", "cache": work / "cache" / "faces.npz",
            "photos": photos, "root": root}


def test_readme_quick_start_on_the_test_photos_gives_one_person_per_faceset(quick_start):
    r = quick_start["proc"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "will be ESTIMATED from the cache's own faces after embed" in r.stdout
    assert re.search(r"ESTIMATED, used for --threshold 0\.\d+", r.stdout)
    top = json.loads((quick_start["out"] / "swap_ready" / "manifest.json").read_text())
    assert len(top["facesets"]) >= 18      # 20 people; a thin one may fall under --min-faces
    people = []
    for entry in top["facesets"]:
        m = json.loads((quick_start["out"] / "swap_ready" / entry["manifest"]).read_text())
        who = {identity_of(f["path"]) for f in m["faces"]}
        assert len(who) == 1, f"{entry['name']} mixes {who}"
        assert (quick_start["out"] / "swap_ready" / entry["top_bundle"]).is_file()
        people += who
    assert len(set(people)) == len(people), "one faceset per person"
    # recorded in the cache, where a later step command finds it, labelled
    from facesets.formats.cache import load_cache
    est = load_cache(quick_start["cache"]).meta["estimate"]
    assert est["method"] == "nn-modes" and 0.4 < est["thresholds"]["cluster"] < 0.8
    c = run_cli("cluster", quick_start["cache"], quick_start["root"] / "raw2")
    assert f"threshold {est['thresholds']['cluster']} (ESTIMATED from the cache" in c.stdout


def _cache_variant(src: Path, dest: Path, change) -> Path:
    """A copy of a real cache with ``change(cache)`` applied, written as one base file."""
    from facesets.formats.cache import load_cache, save_cache
    cache = load_cache(src)
    change(cache)
    save_cache(cache, dest)
    return dest


def test_an_untrustworthy_cache_is_refused_in_one_message_naming_calibrate(quick_start,
                                                                           tmp_path):
    assert quick_start["proc"].returncode == 0

    def few(cache):   # 40 faces: too few to read two modes off
        cache.faces = {k: v[:40] for k, v in cache.faces.items()}
        cache.meta.pop("estimate", None)

    def random(cache):   # embeddings that do not separate anyone
        rng = np.random.default_rng(7)
        cache.faces["embedding"] = rng.standard_normal(cache.faces["embedding"].shape) \
            .astype(np.float32)
        cache.meta.pop("estimate", None)

    for change, why in ((few, "only 40 faces with a neighbour"), (random, "one mode only")):
        cache = _cache_variant(quick_start["cache"], tmp_path / f"{change.__name__}.npz",
                               change)
        r = run_cli("calibrate", "--estimate", cache, check=False)
        assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stdout + r.stderr
        assert why in r.stderr and f"calibrate {cache} TRUTH_ROOT --save" in r.stderr
        from facesets.formats.cache import load_cache
        assert "estimate" not in load_cache(cache).meta   # nothing recorded
        # run with that cache stops before any work, with the same one message
        out = tmp_path / f"out_{change.__name__}"
        r = run_cli("run", quick_start["photos"], out, "--cache", cache, "--model",
                    "testpack_s", "--model-root", SHARED / "insightface", "--no-progress",
                    check=False)
        assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stdout + r.stderr
        assert why in r.stderr and "calibrate" in r.stderr
        assert not out.exists() and "embed:" not in r.stdout
    # a SRC with photos the cache lacks (a run stopped during embed, resumed): embed first,
    # then the same refusal, right after embed and before any clustering
    src = tmp_path / "more"
    src.mkdir()
    shutil.copy2(next(quick_start["photos"].glob("*/*.jpg")), src / "new.jpg")
    r = run_cli("run", src, tmp_path / "out_more", "--cache", tmp_path / "few.npz", "--model",
                "testpack_s", "--model-root", SHARED / "insightface", "--no-progress",
                check=False)
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stdout + r.stderr
    assert "is made again after embed" in r.stdout and "embed:" in r.stdout
    assert "only 40 faces with a neighbour" in r.stderr and "cluster:" not in r.stdout


def test_an_unsure_estimate_goes_on_at_the_strict_end_and_says_how_to_do_better(quick_start,
                                                                             tmp_path):
    """Issue 24: overlapping same-person and stranger modes (here: the test faces' embeddings
    blurred with noise until the valley fills) no longer stop a first run; the estimate goes
    on at the conservative end, says so and names calibrate, and no faceset mixes people."""
    assert quick_start["proc"].returncode == 0

    def blur(cache):
        rng = np.random.default_rng(3)
        e = cache.faces["embedding"]
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        cache.faces["embedding"] = (e + 1.0 * rng.standard_normal(e.shape) /
                                    np.sqrt(e.shape[1])).astype(np.float32)
        cache.meta.pop("estimate", None)

    cache = _cache_variant(quick_start["cache"], tmp_path / "blurred.npz", blur)
    r = run_cli("calibrate", "--estimate", cache)
    assert "UNSURE: no clear valley" in r.stdout, r.stdout
    assert "conservative (high-precision) end" in r.stdout
    assert f"calibrate {cache} TRUTH_ROOT --save" in r.stdout
    from facesets.formats.cache import load_cache
    est = load_cache(cache).meta["estimate"]
    stats = est["stats"]
    assert stats["unsure"].startswith("no clear valley")
    t = est["thresholds"]["cluster"]
    assert stats["near_peak"] <= t <= stats["valley"] and "UNSURE" in est["how"]
    c = run_cli("cluster", cache, tmp_path / "raw", "--truth", quick_start["photos"])
    assert f"threshold {t} (ESTIMATED from the cache" in c.stdout
    precision = float(re.search(r"truth scores: pairwise P ([\d.]+)", c.stdout).group(1))
    assert precision >= 0.99, c.stdout


@pytest.mark.parametrize("field, value, said", [
    ("thresholds.cluster", 7.0, "meta.estimate.thresholds.cluster is 7.0, expected a cosine"),
    ("thresholds.merge", "0.4", 'meta.estimate.thresholds.merge is "0.4"'),
    ("version", 99, "meta.estimate.version is 99"),
    ("faces", None, "meta.estimate.faces is null"),
])
def test_a_tampered_estimate_is_refused_with_file_and_field(quick_start, tmp_path, field,
                                                            value, said):
    assert quick_start["proc"].returncode == 0

    def tamper(cache):
        where = cache.meta["estimate"]
        *parents, leaf = field.split(".")
        for p in parents:
            where = where[p]
        where[leaf] = value

    cache = _cache_variant(quick_start["cache"], tmp_path / "tampered.npz", tamper)
    r = run_cli("cluster", cache, tmp_path / "raw", check=False)
    assert r.returncode == 2 and r.stderr.count("error:") == 1
    assert f"{cache}: {said}" in r.stderr
    assert not (tmp_path / "raw").exists()


# ---- pure logic ---------------------------------------------------------------------------

@pytest.mark.unit
def test_two_modes_give_a_valley_and_one_mode_is_refused():
    from facesets.steps.estimate import (EstimateError, conservative_threshold, modes,
                                     stranger_edge)
    rng = np.random.default_rng(1)
    d = np.r_[rng.normal(0.25, 0.06, 800), rng.normal(0.70, 0.03, 300)]
    m = modes(d)
    assert abs(m["near_peak"] - 0.25) < 0.04 and abs(m["far_peak"] - 0.70) < 0.02
    assert 0.40 < m["valley"] < 0.62
    t, spread = stranger_edge(d, m["far_peak"])
    assert abs(spread - 0.03) < 0.01 and abs(t - 0.64) < 0.03
    with pytest.raises(EstimateError, match="one mode only"):
        modes(rng.normal(0.7, 0.05, 1000))
    # modes that overlap: not refused but UNSURE, and the threshold goes to the strict end
    m = modes(np.r_[rng.normal(0.45, 0.08, 800), rng.normal(0.65, 0.06, 800)])
    assert m["unsure"].startswith("no clear valley")
    t = conservative_threshold(m, stranger_edge(d, m["far_peak"])[0])
    assert m["near_peak"] <= t <= m["valley"]
    # a thin stranger mode (nearly everyone seen many times): unsure too, never refused
    m = modes(np.r_[rng.normal(0.25, 0.05, 2000), rng.normal(0.70, 0.03, 60)])
    assert "holds only" in m["unsure"]


@pytest.mark.unit
def test_estimated_thresholds_come_after_flags_calibrated_and_model_defaults():
    from facesets.core.thresholds import derived, missing_thresholds, resolve_with_source
    est = {"version": 1, "how": "valley", "thresholds": {"cluster": 0.6, "merge": 0.44}}
    meta = {"model": "testpack_s", "estimate": est}
    v, src = resolve_with_source("cluster", meta, None)
    assert v == 0.6 and src.startswith("ESTIMATED from the cache: valley")
    assert resolve_with_source("cluster", meta, 0.5) == (0.5, "flag")
    assert resolve_with_source("cluster", dict(meta, thresholds={"cluster": 0.7}), None) \
        == (0.7, "calibrated")
    assert resolve_with_source("cluster", dict(meta, model="buffalo_l"), None) \
        == (0.55, "model default")
    assert missing_thresholds(["cluster", "merge", "outlier"], meta, {}) == ["outlier"]
    value, source = derived("dedup_near", meta)   # scaled from the estimated cluster
    assert value == pytest.approx(0.6 * 0.05 / 0.55, abs=1e-4) and "ESTIMATED" in source
    assert derived("dedup_near", dict(meta, model="buffalo_l")) == (None, "")


@pytest.mark.unit
def test_an_estimate_record_is_checked_as_it_is_written():
    from facesets.formats.cache import CacheError, check_estimate, estimate_record
    rec = estimate_record("nn-modes", "how", 120, {"cluster": 0.6}, {"valley": 0.5})
    assert check_estimate(json.loads(json.dumps(rec)), "x") == rec
    for bad in ({"cluster": float("nan")}, {"cluster": 0}, {"cluster": True}, {}):
        with pytest.raises(CacheError, match="x"):
            check_estimate(dict(rec, thresholds=bad), "x")
