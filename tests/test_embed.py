"""embed: real photos, real files, real subprocesses."""
from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import FACES, PACK, ROOT, SHARED, copy_cache, run_cli
from facesets.sources import folder
from facesets.formats.cache import list_segments, load_cache
from facesets.steps.embed import embed_folder
from facesets.io.fsutil import FileLock
from facesets.io.imageio import decode, face_blur


def _some_photos(dest: Path, people=3, per_person=4) -> list[Path]:
    out = []
    for person in sorted(FACES.iterdir())[:people]:
        (dest / person.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(person.iterdir())[:per_person]:
            shutil.copy2(f, dest / person.name / f.name)
            out.append(dest / person.name / f.name)
    return out


def _backend():
    from facesets.backends import load_backend
    return load_backend(PACK[1], PACK[3])


def test_every_photo_is_recorded_and_the_cache_has_no_pickle(faces_cache):
    cache = load_cache(faces_cache)
    n_photos = sum(1 for _ in FACES.rglob("*.jpg"))
    assert cache.n_files == n_photos
    assert set(cache.files["status"].tolist()) <= {"face", "noface"}
    # every photo of LFW shows its person: every file has at least one face
    assert set(cache.faces["sha256"].tolist()) == set(cache.files["sha256"].tolist())
    assert cache.faces["embedding"].dtype == np.float32
    assert cache.faces["embedding"].shape[1] == cache.meta["embedding_dim"] == 128
    assert cache.meta["model"] == "testpack_s"
    # the base file loads without pickle and holds no object array
    with np.load(faces_cache, allow_pickle=False) as z:
        for k in z.files:
            assert z[k].dtype.kind != "O", k
    assert not list_segments(faces_cache), "segments are compacted at the end of a run"


def test_rerun_over_unchanged_tree_hashes_and_embeds_nothing(faces_cache, tmp_path, monkeypatch):
    cache = copy_cache(faces_cache, tmp_path)
    before = load_cache(cache)

    def no_hashing(path):
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(folder, "sha256_file", no_hashing)
    summary = embed_folder(str(FACES), str(cache), load=lambda: pytest.fail("model loaded"),
                           model="testpack_s", progress=False)
    assert summary.unchanged == summary.seen == before.n_files
    assert summary.new == 0 and summary.faces == 0
    assert not list_segments(cache)


def test_aliases_are_recorded_once_and_materialized_everywhere(tmp_path):
    src_a, src_b = tmp_path / "a", tmp_path / "b"
    photos = _some_photos(src_a, people=3, per_person=3)
    # byte-identical copies: one inside the same source, one in a second source
    (src_a / "copies").mkdir()
    dup1 = src_a / "copies" / "same as first.JPG"
    shutil.copy2(photos[0], dup1)
    src_b.mkdir()
    dup2 = src_b / "backup_of_second.jpeg"
    shutil.copy2(photos[1], dup2)
    cache = tmp_path / "c.npz"
    out = run_cli("embed", src_a, cache, *PACK, "--no-progress").stdout
    assert "new 9" in out and "aliased 1" in out
    out = run_cli("embed", src_b, cache, *PACK, "--no-progress").stdout
    assert "new 0" in out and "aliased 1" in out
    c = load_cache(cache)
    assert c.n_files == 9
    assert len(c.paths["path"]) == 11
    locs = c.locations()
    assert str(dup1) in locs[folder.sha256_file(str(photos[0]))]
    run_cli("cluster", cache, tmp_path / "raw", "--threshold", "0.65")
    run_cli("refine", cache, tmp_path / "ref", "--initial-threshold", "0.65",
            "--merge-threshold", "0.5", "--outlier-threshold", "0.65", "--min-faces", "2",
            "--min-short", "20", "--min-blur", "0", "--min-det-score", "0.5")
    from facesets.io.materialize import flat_name
    for out_dir in (tmp_path / "raw", tmp_path / "ref"):
        placed = {p.name for p in out_dir.rglob("*") if p.is_file()}
        for p in [dup1, dup2, photos[0], photos[1]]:
            assert flat_name(str(p)) in placed, (out_dir, p)


def test_kill_mid_embed_then_resume_embeds_each_file_exactly_once(faces_cache, tmp_path):
    cache = tmp_path / "k.npz"
    proc = subprocess.Popen([sys.executable, str(ROOT / "sort_faces.py"), "embed", str(FACES),
                             str(cache), *PACK, "--flush-every", "5", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list_segments(cache)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list_segments(cache)) >= 3, "the run ended before it could be killed"
    partial = load_cache(cache)  # a killed run never leaves a cache that fails to load
    done = partial.n_files
    assert 0 < done < 180 and done % 5 == 0  # exactly the flushed windows
    # the stale lock of the killed process is taken over; only the rest is embedded
    out = run_cli("embed", FACES, cache, *PACK, "--no-progress").stdout
    assert f"new {180 - done}," in out, out
    final, ref = load_cache(cache), load_cache(faces_cache)
    assert final.n_files == 180 == len(set(final.files["sha256"].tolist()))
    keys, ref_keys = final.face_keys(), ref.face_keys()
    assert sorted(keys.tolist()) == sorted(ref_keys.tolist())
    order, ref_order = np.argsort(keys), np.argsort(ref_keys)
    np.testing.assert_allclose(final.faces["embedding"][order],
                               ref.faces["embedding"][ref_order], atol=1e-5)
    np.testing.assert_allclose(final.faces["bbox"][order], ref.faces["bbox"][ref_order],
                               atol=1e-3)


def _png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size (the pixel data is never decoded)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_bad_files_are_recorded_with_reasons_and_the_run_goes_on(tmp_path, monkeypatch):
    src = tmp_path / "src"
    good = _some_photos(src, people=2, per_person=2)
    real = good[0].read_bytes()
    (src / "empty.jpg").write_bytes(b"")
    (src / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (src / "notes.png").write_text("not an image at all")
    (src / "bomb.png").write_bytes(_png_with_size(100_000, 100_000))
    vanishing = src / "vanishing.jpg"
    shutil.copy2(good[1], vanishing)
    (src / "vanishing.jpg").write_bytes(real + b"\x00")  # distinct content

    real_plan = folder.plan_embed

    def plan_then_delete(*a, **kw):
        plan = real_plan(*a, **kw)
        vanishing.unlink()  # gone between listing/hashing and reading
        return plan

    import facesets.steps.embed as embed_mod
    monkeypatch.setattr(embed_mod, "plan_embed", plan_then_delete)
    cache = tmp_path / "bad.npz"
    summary = embed_folder(str(src), str(cache), load=_backend, model="testpack_s",
                           progress=False)
    assert summary.errors == 5 and summary.new == 9
    c = load_cache(cache)
    reasons = {os.path.basename(p): e for p, e in zip(c.files["path"].tolist(),
                                                      c.files["error"].tolist()) if e}
    assert "empty" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.png"]
    assert "too large" in reasons["bomb.png"]
    assert "vanished" in reasons["vanishing.jpg"]
    assert int(np.sum(c.files["status"] == "face")) == 4


def test_cli_summary_counts_errors(tmp_path):
    src = tmp_path / "src"
    _some_photos(src, people=1, per_person=2)
    (src / "zero.jpg").write_bytes(b"")
    out = run_cli("embed", src, tmp_path / "c.npz", *PACK, "--no-progress").stdout
    assert "errors 1" in out and "img/s" in out
    # the summary names the providers the sessions actually ran on
    assert "img/s; providers CPUExecutionProvider" in out and "WARNING" not in out


def test_embedding_into_a_cache_of_another_model_is_refused(faces_cache, tmp_path):
    cache = copy_cache(faces_cache, tmp_path)
    src = tmp_path / "src"
    for p in _some_photos(src, people=1, per_person=1):
        p.write_bytes(p.read_bytes() + b"\0")  # new content: it must be embedded
    # same weights under another pack name
    other = tmp_path / "packs" / "models" / "otherpack"
    shutil.copytree(Path(PACK[3]) / "models" / "testpack_s", other)
    p = run_cli("embed", src, cache, "--model", "otherpack", "--model-root",
                tmp_path / "packs", check=False)
    assert p.returncode != 0
    assert "testpack_s" in p.stderr and "otherpack" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    # same name, other weights (model_id differs)
    from facesets.formats.cache import update_meta
    update_meta(cache, model_id="testpack_s:000000000000")
    p = run_cli("embed", src, cache, *PACK, check=False)
    assert p.returncode != 0 and "other weights" in p.stderr


def test_missing_model_pack_says_where_it_looked(tmp_path):
    src = tmp_path / "src"
    _some_photos(src, people=1, per_person=1)
    p = run_cli("embed", src, tmp_path / "c.npz", "--model", "buffalo_l", "--model-root",
                tmp_path / "nowhere", check=False)
    assert p.returncode == 2
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and str(tmp_path / "nowhere") in line
    assert "--model-root" in line
    assert not (tmp_path / "c.npz").exists()


def test_a_second_embed_on_a_locked_cache_is_refused(tmp_path):
    src = tmp_path / "src"
    _some_photos(src, people=1, per_person=1)
    cache = tmp_path / "c.npz"
    with FileLock(str(cache) + ".lock"):
        p = run_cli("embed", src, cache, *PACK, check=False)
    assert p.returncode == 2
    assert f"pid {os.getpid()}" in p.stderr


def test_exif_orientation_is_applied_before_detection(tmp_path):
    upright_path = sorted((FACES / "Colin_Powell").iterdir())[0]
    upright = Image.open(upright_path)
    stored = upright.rotate(90, expand=True)  # sideways pixels...
    exif = Image.Exif()
    exif[0x0112] = 6                          # ...that viewers rotate back upright
    src = tmp_path / "src"
    src.mkdir()
    stored.save(src / "sideways.jpg", exif=exif.tobytes(), quality=95)
    shutil.copy2(upright_path, src / "upright.jpg")
    cache = tmp_path / "c.npz"
    embed_folder(str(src), str(cache), load=_backend, model="testpack_s", progress=False)
    c = load_cache(cache)
    by_file = {os.path.basename(p): s for p, s in zip(c.files["path"], c.files["sha256"])}

    def centre_face(sha):
        rows = np.flatnonzero(c.faces["sha256"] == sha)
        b = c.faces["bbox"][rows]
        d = np.hypot((b[:, 0] + b[:, 2]) / 2 - 125, (b[:, 1] + b[:, 3]) / 2 - 125)
        return rows[np.argmin(d)]

    a, b = centre_face(by_file["sideways.jpg"]), centre_face(by_file["upright.jpg"])
    ea, eb = c.faces["embedding"][a], c.faces["embedding"][b]
    cos = float(ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb))
    assert cos > 0.9, cos
    np.testing.assert_allclose(c.faces["bbox"][a], c.faces["bbox"][b], atol=6)


def test_blur_does_not_depend_on_the_decode_scale(tmp_path):
    img = cv2.imread(str(sorted((FACES / "Tony_Blair").iterdir())[0]))
    big = cv2.resize(img, (1000, 1000), interpolation=cv2.INTER_CUBIC)
    ok, jpg = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = jpg.tobytes()
    full, half = decode(data, 1), decode(data, 2)
    bbox = np.array([330, 290, 670, 740], dtype=np.float32)  # the face, in full pixels
    b_full, b_half = face_blur(full, bbox), face_blur(half, bbox / 2)
    assert b_full > 0
    assert abs(b_full - b_half) / b_full < 0.15, (b_full, b_half)


def test_large_photos_are_detected_at_reduced_scale_with_the_same_faces(tmp_path):
    """A 12-MP photo: read at 1/2 scale (JPEG DCT scaling), detected on that shrunk to the
    detector input; the result matches detecting and embedding a full decode."""
    from facesets.core.analyze import analyze_photo, load_photo

    face = cv2.imread(str(sorted((FACES / "Hugo_Chavez").iterdir())[0]))
    canvas = np.full((3000, 4000, 3), 90, np.uint8)
    canvas[1000:1750, 1500:2250] = cv2.resize(face, (750, 750), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    backend = _backend()
    photo = load_photo(str(path), "x", backend.det_size)
    assert photo.factor == 2 and photo.image.shape[:2] == (1500, 2000)
    assert max(photo.det_image.shape[:2]) == backend.det_size
    result = analyze_photo(backend, photo)
    naive = backend.analyze(cv2.imread(str(path)))
    assert len(result.faces) == len(naive) >= 1
    ours = max(result.faces, key=lambda f: f.face_short)
    ref = max(naive, key=lambda f: f.bbox[2] - f.bbox[0])
    cos = float(ours.face.embedding @ ref.embedding
                / np.linalg.norm(ours.face.embedding) / np.linalg.norm(ref.embedding))
    assert cos > 0.95, cos
    np.testing.assert_allclose(ours.face.bbox, ref.bbox, atol=12)


def test_ctrl_c_flushes_and_exits_cleanly(tmp_path):
    cache = tmp_path / "i.npz"
    # progress (stderr, not a terminal: plain lines, here one per photo) shows when photos
    # are being embedded
    proc = subprocess.Popen([sys.executable, str(ROOT / "sort_faces.py"), "embed", str(FACES),
                             str(cache), *PACK, "--flush-every", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, FACESETS_PROGRESS_EVERY="0"),
                            # as in a terminal: a shell's background job (a CI runner started
                            # with `&`) hands its children SIGINT ignored, and Ctrl-C is lost
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr = bytearray()

    def read_stderr():
        while chunk := os.read(proc.stderr.fileno(), 4096):
            stderr.extend(chunk)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    # wait until the model is loaded and a photo is embedded (not yet flushed: no segment),
    # however slow the machine: Ctrl-C must then flush it
    embedding = re.compile(rb"embedding: [1-9][0-9]*/180 ")
    deadline = time.monotonic() + 300
    while not embedding.search(bytes(stderr)) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)   # stdout holds a few summary lines: its pipe never fills
    out = proc.stdout.read().decode()
    reader.join(timeout=10)
    err = stderr.decode(errors="replace")
    assert proc.returncode == 130, err
    assert "interrupted" in out
    partial = load_cache(cache)  # what was embedded before Ctrl-C was flushed
    assert 0 < partial.n_files < 180
    assert not Path(str(cache) + ".lock").exists()
    rest = run_cli("embed", FACES, cache, *PACK, "--no-progress").stdout
    assert f"new {180 - partial.n_files}," in rest


def test_packs_with_landmark_models_fill_landmarks_and_pose(tmp_path):
    from onnx_models import pack_with_landmarks

    pack = pack_with_landmarks(Path(PACK[3]) / "models" / "testpack_s",
                               tmp_path / "packs" / "models" / "lmkpack")
    src = tmp_path / "src"
    _some_photos(src, people=2, per_person=2)
    shutil.copy2(sorted((SHARED / "testdata" / "group").glob("*.jpg"))[0],
                 src / "group.jpg")
    cache = tmp_path / "l.npz"
    run_cli("embed", src, cache, "--model", "lmkpack", "--model-root", tmp_path / "packs",
            "--no-progress")
    c = load_cache(cache)
    assert c.meta["has_landmarks"] is True and c.n_faces > 5
    assert c.faces["landmark_2d_106"].shape == (c.n_faces, 106, 2)
    assert c.faces["landmark_3d_68"].shape == (c.n_faces, 68, 3)
    assert np.isfinite(c.faces["landmark_2d_106"]).all()
    assert np.isfinite(c.faces["pose"]).all()
    assert set(c.faces["pose_method"].tolist()) == {"3d68"}
    # landmarks are in full-size pixels: around each face, not around the decode origin
    centre = c.faces["landmark_2d_106"].mean(axis=1)
    b = c.faces["bbox"]
    w = (b[:, 2] - b[:, 0])[:, None]
    box_centre = np.c_[(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2]
    assert (np.abs(centre - box_centre) < w).all()
