"""backends/onnx_pack.py runs a pack's ONNX models without the insightface package and gives
its numbers: boxes, keypoints and embeddings compared with the package's on real photos; and
`embed` in a process where insightface cannot be imported makes the same cache."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import FACES, GROUP, PACK, SHARED, needs_shared, run_cli

TOL = 1e-4
PACK_DIR = SHARED / "insightface" / "models" / "testpack_s"


def _photos() -> list:
    return sorted(GROUP.glob("*.jpg")) + [sorted(d.iterdir())[0] for d in sorted(FACES.iterdir())
                                          if d.is_dir()][:8]


@pytest.mark.parametrize("det_size", [640, 320])
def test_onnx_pack_gives_insightfaces_boxes_keypoints_and_embeddings(det_size):
    needs_shared()
    import cv2
    from insightface.app import FaceAnalysis
    from insightface.utils import face_align

    from facesets.backends import onnx_pack
    from facesets.backends.insightface_backend import session_options

    providers = ["CPUExecutionProvider"]
    opts = session_options(providers)
    app = FaceAnalysis(name=str(PACK_DIR), providers=providers, sess_options=opts)
    app.prepare(ctx_id=-1, det_thresh=0.5, det_size=(det_size, det_size))
    models = onnx_pack.load_models(PACK_DIR, providers, opts)
    assert sorted(models) == ["detection", "recognition"]
    models["detection"].prepare((det_size, det_size), 0.5, providers, opts)
    faces = 0
    for photo in _photos():
        image = cv2.imread(str(photo))
        boxes, kps = app.models["detection"].detect(image, max_num=0)
        got_boxes, got_kps = models["detection"].detect(image)
        assert got_boxes.shape == boxes.shape, photo
        if not len(boxes):
            continue
        faces += len(boxes)
        assert np.abs(got_boxes - boxes).max() <= TOL and np.abs(got_kps - kps).max() <= TOL
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # scikit-image's deprecated estimate()
            want = app.models["recognition"].get_feat(
                [face_align.norm_crop(image, landmark=k, image_size=112) for k in kps])
        got = models["recognition"].get_feat([onnx_pack.norm_crop(image, k, 112)
                                              for k in got_kps])
        assert got.shape == want.shape and np.abs(got - want).max() <= TOL, photo
    assert faces >= 20


def test_onnx_pack_gives_insightfaces_landmarks_and_pose(tmp_path):
    """On stand-ins of buffalo_l's 2d106 and 3d68 models (tests/onnx_models.py)."""
    needs_shared()
    import cv2
    from insightface.app import FaceAnalysis
    from onnx_models import pack_with_landmarks

    from facesets.backends import onnx_pack
    from facesets.backends.insightface_backend import session_options

    pack = pack_with_landmarks(PACK_DIR, tmp_path / "pack")
    providers = ["CPUExecutionProvider"]
    opts = session_options(providers)
    app = FaceAnalysis(name=str(pack), providers=providers, sess_options=opts)
    app.prepare(ctx_id=-1, det_thresh=0.5, det_size=(640, 640))
    models = onnx_pack.load_models(pack, providers, opts)
    assert sorted(models) == ["detection", "landmark_2d_106", "landmark_3d_68", "recognition"]
    assert sorted(onnx_pack.load_models(pack, providers, opts, ["detection",
                                                                 "landmark_3d_68"])) == \
        ["detection", "landmark_3d_68"]
    faces = 0
    for photo in _photos()[:10]:
        image = cv2.imread(str(photo))
        for face in app.get(image):
            faces += 1
            points, none = models["landmark_2d_106"].get(image, face.bbox)
            assert none is None and points.shape == (106, 2)
            assert np.abs(points - face["landmark_2d_106"]).max() <= TOL
            points, pose = models["landmark_3d_68"].get(image, face.bbox)
            assert points.shape == (68, 3)
            assert np.abs(points - face["landmark_3d_68"]).max() <= TOL
            assert np.abs(pose - face["pose"]).max() <= TOL
    assert faces >= 10


def _without_insightface(tmp_path) -> dict:
    """The environment of a process where insightface cannot be imported: a package of that
    name that raises ImportError, first on the path."""
    hidden = tmp_path / "hide" / "insightface"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('insightface hidden by the test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(hidden.parent),
                                           os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)}


def test_a_zoo_pack_missing_without_insightface_says_how_to_get_it(tmp_path):
    needs_shared()
    root = tmp_path / "models_root"
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(_photos()[0], photos / "a.jpg")
    r = run_cli("embed", photos, tmp_path / "c.npz", "--model", "buffalo_sc", "--model-root",
                root, "--no-progress", check=False, env=_without_insightface(tmp_path))
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert f"unzip it to {root / 'models' / 'buffalo_sc'}" in r.stderr
    assert "insightface package, which is not installed" in r.stderr
    assert not root.exists() and not (tmp_path / "c.npz").exists()


def test_embed_without_the_insightface_package_makes_the_same_cache(tmp_path):
    needs_shared()
    from facesets.formats.cache import load_cache

    photos = tmp_path / "photos"
    photos.mkdir()
    for f in _photos()[:6]:
        shutil.copy(f, photos / f.name)
    env = _without_insightface(tmp_path)
    # that process loads the pack through onnx_pack
    code = ("import facesets.backends as b; print(b.load_backend('testpack_s', "
            f"{str(SHARED / 'insightface')!r}).runner)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, **env), timeout=120)
    assert r.stdout.split() == ["onnx_pack"], r.stderr[-2000:]
    # the test pack with landmark stand-ins: embed takes the pose from the 3d68 model
    from onnx_models import pack_with_landmarks

    pack = ["--model", pack_with_landmarks(PACK_DIR, tmp_path / "pack")]
    with_pkg, without = tmp_path / "a.npz", tmp_path / "b.npz"
    run_cli("embed", photos, with_pkg, *pack, "--no-progress")
    run_cli("embed", photos, without, *pack, "--no-progress", env=env)
    a, b = load_cache(with_pkg), load_cache(without)
    assert a.meta["model_id"] == b.meta["model_id"] and a.n_faces == b.n_faces > 5
    order_a, order_b = np.argsort(a.face_keys()), np.argsort(b.face_keys())
    assert (a.face_keys()[order_a] == b.face_keys()[order_b]).all()
    assert set(b.faces["pose_method"].tolist()) == {"3d68"}
    for column in ("embedding", "bbox", "kps", "det_score", "pose"):
        assert np.abs(a.faces[column][order_a] - b.faces[column][order_b]).max() <= TOL, column
