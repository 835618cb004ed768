"""The cache format: segments, merge rules, compaction, clear errors (real files on disk)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import copy_cache, run_cli
from facesets.cache import (CacheError, SegmentWriter, compact_cache, list_segments,
                            load_cache, segments_dir)

META = {"model": "m", "model_id": "m:1", "embedding_dim": 4}


def _face(sha, i, value):
    return dict(sha256=sha, index=i, embedding=np.full(4, value, np.float32),
                bbox=[0, 0, 10, 10], kps=np.zeros((5, 2)), det_score=0.9, face_short=10,
                blur=50.0, pose=None, pose_method="")


def test_flushes_append_segments_and_never_rewrite_the_base(tmp_path):
    cache = tmp_path / "c.npz"
    w = SegmentWriter(cache, META)
    w.add("files", sha256="a", path="/p/a.jpg", width=10, height=10, status="face", error="")
    w.add("faces", **_face("a", 0, 1.0))
    w.flush()
    compact_cache(cache)
    base_stat = os.stat(cache)
    w = SegmentWriter(cache, META)
    for k in range(3):
        w.add("files", sha256=f"b{k}", path=f"/p/b{k}.jpg", width=10, height=10,
              status="noface", error="")
        w.flush()
    assert len(list_segments(cache)) == 3
    assert os.stat(cache).st_mtime_ns == base_stat.st_mtime_ns  # base untouched
    c = load_cache(cache)
    assert c.n_files == 4 and c.n_faces == 1


def test_the_last_segment_mentioning_a_photo_supplies_all_its_faces(tmp_path):
    cache = tmp_path / "c.npz"
    w = SegmentWriter(cache, META)
    w.add("files", sha256="a", path="/p/a.jpg", width=10, height=10, status="face", error="")
    w.add("faces", **_face("a", 0, 1.0))
    w.add("faces", **_face("a", 1, 2.0))
    w.flush()
    # a later writer (enrich) re-writes the faces of "a" with a landmark column
    w.add("faces", **dict(_face("a", 0, 1.0), pose=[1, 2, 3], pose_method="kps5",
                          landmark_3d_68=np.ones((68, 3))))
    w.add("faces", **dict(_face("a", 1, 2.0), pose=[4, 5, 6], pose_method="kps5"))
    w.flush()
    c = load_cache(cache)
    assert c.n_faces == 2
    assert c.faces["pose_method"].tolist() == ["kps5", "kps5"]
    assert np.isnan(c.faces["landmark_3d_68"][1]).all() and (c.faces["landmark_3d_68"][0] == 1).all()
    # a photo re-recorded as noface loses its faces
    w.add("files", sha256="a", path="/p/a.jpg", width=10, height=10, status="noface", error="")
    w.flush()
    assert load_cache(cache).n_faces == 0


def test_segments_left_by_a_crash_during_compaction_change_nothing(faces_cache, tmp_path):
    cache = copy_cache(faces_cache, tmp_path)
    w = SegmentWriter(cache, load_cache(cache).meta)
    w.add("files", sha256="z" * 64, path="/x/z.jpg", width=1, height=1, status="noface",
          error="")
    seg = w.flush()
    kept = tmp_path / "kept.npz"
    shutil.copy2(seg, kept)
    compact_cache(cache)
    shutil.copy2(kept, seg)  # as if the crash came after the base replace
    a, b = load_cache(cache), load_cache(faces_cache)
    assert a.n_files == b.n_files + 1 and a.n_faces == b.n_faces
    np.testing.assert_array_equal(np.sort(a.face_keys()), np.sort(b.face_keys()))


def test_temp_files_of_a_killed_flush_are_ignored(tmp_path):
    cache = tmp_path / "c.npz"
    w = SegmentWriter(cache, META)
    w.add("files", sha256="a", path="/p/a.jpg", width=1, height=1, status="noface", error="")
    w.flush()
    (segments_dir(cache) / ".seg-00000002.npz.abc.tmp").write_bytes(b"PK\x03\x04 half")
    assert load_cache(cache).n_files == 1


def test_a_corrupt_or_missing_cache_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip")
    with pytest.raises(CacheError, match="bad.npz"):
        load_cache(bad)
    for args in (["cluster", bad, tmp_path / "o", "--threshold", "0.5"],
                 ["cluster", tmp_path / "missing.npz", tmp_path / "o", "--threshold", "0.5"]):
        p = run_cli(*args, check=False)
        assert p.returncode == 2
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and ".npz" in lines[0]
    assert not (tmp_path / "o").exists()


def test_pickled_arrays_are_refused(tmp_path):
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.array('{"schema_version": 1}'),
             **{"files.path": np.array([object()], dtype=object)})
    with pytest.raises(CacheError):
        load_cache(evil)
