"""enrich: pose for every face (kps5 on the test pack), resumable after kill -9, idempotent;
the landmark path on real photos with a stand-in landmark model; pose conventions."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FACES, GROUP, PACK, ROOT, copy_cache, run_cli
from facesets.formats.cache import list_segments, load_cache
from facesets.core.pose import MODEL_5, angles_to_matrix, pose_from_kps


def _faces_in_segments(cache: Path) -> int:
    n = 0
    for seg in list_segments(cache):
        with np.load(seg, allow_pickle=False) as z:
            n += len(z["faces.sha256"]) if "faces.sha256" in z.files else 0
    return n


# ---- pose from 5 keypoints ------------------------------------------------------------
@pytest.mark.parametrize("angles", [(0, 0, 0), (0, 30, 0), (0, -30, 0), (20, 0, 0),
                                    (-20, 0, 0), (0, 0, 25), (10, -40, 15), (-15, 50, -10)])
@pytest.mark.unit
def test_pose_from_kps_recovers_known_angles_in_insightface_convention(angles):
    from insightface.utils import transform

    points = 120 * MODEL_5 @ angles_to_matrix(*angles).T + [300, 200, 0]
    # InsightFace's own pose code (what its 3d68 model runs) reads these angles back
    _, rot, _ = transform.P2sRt(transform.estimate_affine_matrix_3d23d(MODEL_5, points))
    assert np.allclose(transform.matrix2angle(rot), angles, atol=0.01)
    # and the keypoint estimate gives the same angles, same signs
    assert np.allclose(pose_from_kps(points[:, :2]), angles, atol=1.5)


@pytest.mark.unit
def test_pose_from_kps_degenerate_input_is_nan():
    assert np.isnan(pose_from_kps(np.full((5, 2), np.nan))).all()
    assert np.isnan(pose_from_kps(np.zeros((5, 2)))).all()
    assert np.isnan(pose_from_kps(np.zeros((4, 2)))).all()


def test_mirrored_photos_mirror_yaw_and_roll(tmp_path):
    """On real photos: mirroring an image negates yaw and roll, keeps pitch."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    photos = sorted((FACES / "George_W_Bush").glob("*.jpg"))[:4]
    for p in photos:
        with Image.open(p) as im:
            im.save(src / "a" / p.name, quality=95)
            im.transpose(Image.FLIP_LEFT_RIGHT).save(src / "b" / p.name, quality=95)
    cache = tmp_path / "m.npz"
    run_cli("embed", src, cache, *PACK, "--no-progress")
    run_cli("enrich", cache, *PACK, "--no-progress")
    c = load_cache(cache)
    path_of = dict(zip(c.files["sha256"].tolist(), c.files["path"].tolist()))
    centre = {}   # photo -> pose of its largest face (the labelled person)
    for sha in set(c.faces["sha256"].tolist()):
        rows = np.flatnonzero(c.faces["sha256"] == sha)
        r = rows[np.argmax(c.faces["face_short"][rows])]
        centre[path_of[sha]] = c.faces["pose"][r]
    for p in photos:
        a, b = centre[str(src / "a" / p.name)], centre[str(src / "b" / p.name)]
        assert abs(a[1] + b[1]) < 4 and abs(a[2] + b[2]) < 4 and abs(a[0] - b[0]) < 4, (a, b)


# ---- enrich on the test pack (no landmark models): kps5 ---------------------------------
def test_enrich_fills_pose_for_every_face_and_second_run_does_nothing(faces_cache, tmp_path):
    cache = copy_cache(faces_cache, tmp_path)
    before = load_cache(cache)
    proc = run_cli("enrich", cache, *PACK, "--no-progress")
    n = before.n_faces
    assert f"{n} of {n} faces enriched (kps5" in proc.stdout
    after = load_cache(cache)
    assert np.array_equal(after.face_keys(), before.face_keys())
    assert np.array_equal(after.faces["embedding"], before.faces["embedding"])
    assert np.isfinite(after.faces["pose"]).all()
    assert set(after.faces["pose_method"].tolist()) == {"kps5"}
    assert (np.abs(after.faces["pose"]) <= 90).all()
    assert not list_segments(cache)
    stamp = (cache.stat().st_mtime_ns, cache.read_bytes())
    again = run_cli("enrich", cache, *PACK, "--no-progress")
    assert "nothing to do" in again.stdout
    assert (cache.stat().st_mtime_ns, cache.read_bytes()) == stamp


def test_enrich_refuses_a_cache_of_another_model(faces_cache, tmp_path):
    cache = copy_cache(faces_cache, tmp_path)
    proc = run_cli("enrich", cache, "--model", "buffalo_l", check=False)
    assert proc.returncode == 2 and "testpack_s" in proc.stderr


def test_enrich_resumes_after_kill_9_and_enriches_every_face_once(faces_cache, tmp_path):
    total = load_cache(faces_cache).n_faces
    for attempt in range(5):
        (tmp_path / f"try{attempt}").mkdir()
        cache = copy_cache(faces_cache, tmp_path / f"try{attempt}")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "sort_faces.py"), "enrich", str(cache), *PACK,
             "--flush-every", "1", "--no-progress"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and len(list_segments(cache)) < 5:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    else:
        pytest.fail("enrich always finished before it could be killed")
    assert proc.returncode == -signal.SIGKILL
    done = _faces_in_segments(cache)          # faces the killed run wrote (whole photos)
    mid = load_cache(cache)                   # the cache loads as it is after the kill
    assert mid.n_faces == total
    assert 0 < int(np.isfinite(mid.faces["pose"]).all(axis=1).sum()) == done < total
    rerun = run_cli("enrich", cache, *PACK, "--no-progress")
    m = re.search(r"(\d+) of (\d+) faces enriched", rerun.stdout)
    assert m and int(m.group(1)) == int(m.group(2)) == total - done
    final = load_cache(cache)
    assert np.array_equal(final.face_keys(), load_cache(faces_cache).face_keys())
    assert np.isfinite(final.faces["pose"]).all()
    assert "nothing to do" in run_cli("enrich", cache, *PACK, "--no-progress").stdout


# ---- the landmark path: real detector, stand-in landmark model -------------------------
def test_enrich_with_landmark_models_redetects_and_stores_full_size_landmarks(tmp_path):
    """A stand-in for the landmark models (the offline pack has none) that writes each
    face's keypoints as its landmarks: stored landmarks must land on the cached keypoints
    in full-size pixels, for every face of multi-face photos too."""
    from facesets.steps.enrich import detection_loader, run_enrich

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((FACES / "Hugo_Chavez").glob("*.jpg"))[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    groups = sorted(GROUP.glob("*.jpg"))[:3]
    for p in groups:
        (src / p.name).write_bytes(p.read_bytes())
    cache = tmp_path / "l.npz"
    run_cli("embed", src, cache, *PACK, "--no-progress")
    before = load_cache(cache)
    assert before.n_faces > len(list(src.iterdir()))   # some photos hold several faces

    def load():
        backend = detection_loader("testpack_s", str(PACK[3]))()
        backend.has_landmarks = True

        def landmarks(image, faces):
            for f in faces:
                f.landmark_2d_106 = np.resize(f.kps, (106, 2)).astype(np.float32)
                f.landmark_3d_68 = np.c_[np.resize(f.kps, (68, 2)), np.zeros(68)].astype(
                    np.float32)
                f.pose = np.asarray(pose_from_kps(f.kps), np.float32)
        backend.landmarks = landmarks
        return backend

    s = run_enrich(str(cache), load, progress=False, flush_every=2)
    assert s.enriched == s.todo == before.n_faces and s.landmarks == before.n_faces
    after = load_cache(cache)
    assert set(after.faces["pose_method"].tolist()) == {"3d68"}
    kps = after.faces["kps"]
    scale = after.faces["face_short"][:, None]
    err = np.abs(after.faces["landmark_2d_106"][:, :5] - kps).max(axis=2)
    assert (err.max(axis=1) < 0.1 * scale[:, 0]).all()
    assert np.allclose(after.faces["landmark_3d_68"][:, :5, :2],
                       after.faces["landmark_2d_106"][:, :5])
    assert run_enrich(str(cache), load, progress=False).todo == 0
