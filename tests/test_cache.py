"""The cache format: segments, merge rules, compaction, clear errors (real files on disk)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, copy_cache, run_cli
from facesets.formats.cache import (CacheError, SegmentWriter, compact_cache, list_segments,
                            load_cache, segments_dir)

META = {"model": "m", "model_id": "m:1", "embedding_dim": 4}


def _face(sha, i, value):
    return dict(sha256=sha, index=i, embedding=np.full(4, value, np.float32),
                bbox=[0, 0, 10, 10], kps=np.zeros((5, 2)), det_score=0.9, face_short=10,
                blur=50.0, pose=None, pose_method="")


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_pickled_arrays_are_refused(tmp_path):
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.array('{"schema_version": 1}'),
             **{"files.path": np.array([object()], dtype=object)})
    with pytest.raises(CacheError):
        load_cache(evil)


# ---- issue 8 item 10: leftovers of a killed run, garbage lock files ---------------------
def _explode(cache, n_segments: int) -> None:
    """Leave ``cache`` as a run killed after its last flush does: its rows only in segments
    (no base), plus the temp files of a write killed half-way."""
    from facesets.steps.embed_queue import import_rows
    from facesets.formats.cache import FaceCache, table_len

    whole = load_cache(cache)
    cache.unlink()
    shas = whole.files["sha256"]
    for part in np.array_split(np.arange(len(shas)), n_segments):
        piece = FaceCache(meta=whole.meta)
        keep = set(shas[part].tolist())
        for name in ("paths", "files", "faces"):
            table = getattr(whole, name)
            mask = np.isin(table["sha256"], list(keep))
            setattr(piece, name, {k: v[mask] for k, v in table.items()})
        w = SegmentWriter(cache, whole.meta)
        import_rows(w, piece)
        assert table_len(piece.files) and w.flush() is not None
    (cache.parent / f".{cache.name}.k1ll3d00.tmp").write_bytes(b"PK\x03\x04 half a base")
    (segments_dir(cache) / f".seg-{n_segments + 1:08d}.npz.abcd1234.tmp").write_bytes(b"PK")


def _same_content(a, b) -> None:
    assert a.n_files == b.n_files and a.n_faces == b.n_faces
    for name in ("paths", "files", "faces"):
        ta, tb = getattr(a, name), getattr(b, name)
        key = "path" if name == "paths" else "sha256"
        oa, ob = np.lexsort((ta.get("index", ta[key]), ta[key])), \
            np.lexsort((tb.get("index", tb[key]), tb[key]))
        for col in tb:
            np.testing.assert_array_equal(ta[col][oa], tb[col][ob], err_msg=f"{name}.{col}")


def _no_leftovers(cache) -> None:
    assert cache.is_file() and not list_segments(cache)
    temps = [p.name for p in [*cache.parent.iterdir(), *segments_dir(cache).iterdir()]
             if p.name.endswith(".tmp")]
    assert temps == []
    assert not (cache.parent / (cache.name + ".lock")).exists()


def test_embed_rerun_with_nothing_to_do_compacts_what_a_killed_run_left(faces_cache, tmp_path):
    from conftest import FACES, PACK

    cache = copy_cache(faces_cache, tmp_path)
    _explode(cache, 40)
    assert len(list_segments(cache)) == 40 and not cache.exists()
    proc = run_cli("embed", FACES, cache, *PACK, "--no-progress")
    assert "new 0" in proc.stdout
    _no_leftovers(cache)
    _same_content(load_cache(cache), load_cache(faces_cache))


def test_enrich_rerun_with_nothing_to_do_compacts_what_a_killed_run_left(faces_cache, tmp_path):
    from conftest import PACK

    cache = copy_cache(faces_cache, tmp_path)
    run_cli("enrich", cache, *PACK, "--no-progress")
    enriched = load_cache(cache)
    _explode(cache, 12)
    assert "nothing to do" in run_cli("enrich", cache, *PACK, "--no-progress").stdout
    _no_leftovers(cache)
    _same_content(load_cache(cache), enriched)


@pytest.mark.parametrize("content", [b"", b"\x00\xffgarbage", b"[1, 2]",
                                     b'{"pid": "123", "host": 5}'])
def test_an_old_unparsable_lock_nobody_holds_is_taken_over_with_a_note(faces_cache, tmp_path,
                                                                      content):
    from conftest import FACES, PACK

    cache = copy_cache(faces_cache, tmp_path)
    lock = tmp_path / (cache.name + ".lock")
    lock.write_bytes(content)
    old = time.time() - 60
    os.utime(lock, (old, old))
    proc = run_cli("embed", FACES, cache, *PACK, "--no-progress")
    notes = [ln for ln in proc.stderr.splitlines() if "took over the lock" in ln]
    assert len(notes) == 1 and str(lock) in notes[0] and "no process has it open" in notes[0]
    assert not lock.exists()


def test_an_unparsable_lock_a_live_process_holds_open_is_refused(faces_cache, tmp_path):
    from conftest import FACES, PACK

    cache = copy_cache(faces_cache, tmp_path)
    lock = tmp_path / (cache.name + ".lock")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; f = open(sys.argv[1], 'wb'); f.write(b'{');"
                               " f.flush(); print('ok', flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        old = time.time() - 60
        os.utime(lock, (old, old))
        proc = run_cli("embed", FACES, cache, *PACK, "--no-progress", check=False)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is open in another process" in lines[0] and str(lock) in lines[0]
    assert lock.read_bytes() == b"{"


def test_an_empty_lock_being_filled_by_a_live_writer_is_waited_for_and_respected(
        faces_cache, tmp_path):
    """A writer between its O_EXCL create and its write: the lock is not stolen."""
    from conftest import FACES, PACK

    cache = copy_cache(faces_cache, tmp_path)
    lock = tmp_path / (cache.name + ".lock")
    lock.write_bytes(b"")
    proc = subprocess.Popen([sys.executable, str(ROOT / "sort_faces.py"), "embed", FACES,
                             cache, *PACK, "--no-progress"], stderr=subprocess.PIPE, text=True)
    time.sleep(4)   # embed is waiting on the empty lock by now (it waits up to 10 s)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "started": "now"}))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"in use by pid {os.getpid()}" in err
    assert json.loads(lock.read_text())["pid"] == os.getpid()


# ---- issue 8 item 11: readers beside a compaction ----------------------------------------
READER = r"""
import hashlib, sys, time
from pathlib import Path
import numpy as np
from facesets.formats.cache import load_cache
cache, stop, want = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ok = bad = 0
first = ""
while not stop.exists():
    try:
        c = load_cache(cache)
        digest = hashlib.sha256(np.sort(c.face_keys()).tobytes()
                                + np.sort(c.files["path"]).tobytes()
                                + np.ascontiguousarray(c.faces["embedding"][np.argsort(c.face_keys())]).tobytes()
                                ).hexdigest()
        if digest == want:
            ok += 1
        else:
            bad += 1
            first = first or f"content {c.n_files} files {c.n_faces} faces"
    except Exception as exc:
        bad += 1
        first = first or f"{type(exc).__name__}: {exc}"
print(ok, bad, first.replace(chr(10), " "))
"""


def _digest(c) -> str:
    import hashlib

    order = np.argsort(c.face_keys())
    return hashlib.sha256(np.sort(c.face_keys()).tobytes() + np.sort(c.files["path"]).tobytes()
                          + np.ascontiguousarray(c.faces["embedding"][order]).tobytes()
                          ).hexdigest()


def test_a_reader_never_sees_a_half_compacted_cache(tmp_path):
    cache = tmp_path / "c.npz"
    w = SegmentWriter(cache, META)
    rows = []
    for k in range(300):
        sha = f"{k:064x}"
        rows.append((dict(sha256=sha, path=f"/p/{k}.jpg", width=10, height=10, status="face",
                          error=""), [_face(sha, i, k + i / 10) for i in range(1 + k % 2)]))
    for f, faces in rows:
        w.add("files", **f)
        for face in faces:
            w.add("faces", **face)
    w.flush()
    compact_cache(cache)
    want = _digest(load_cache(cache))
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(cache), str(stop), want],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + 12
        rounds = 0
        while time.monotonic() < deadline:
            # a writer re-records photos it already has (same rows): the content never changes
            w = SegmentWriter(cache, META)
            for k in rng.choice(len(rows), 40, replace=False):
                f, faces = rows[k]
                w.add("files", **f)
                for face in faces:
                    w.add("faces", **face)
                if k % 3 == 0:
                    w.flush()
            w.flush()
            compact_cache(cache)
            rounds += 1
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    ok, bad, first = out.split(" ", 2)
    assert int(bad) == 0, f"{bad} of {int(ok) + int(bad)} reads failed, first: {first}"
    assert int(ok) > 20 and rounds > 5
    assert _digest(load_cache(cache)) == want


@pytest.mark.unit
def test_segment_numbers_continue_after_a_compaction(tmp_path):
    cache = tmp_path / "c.npz"
    w = SegmentWriter(cache, META)
    for k in range(3):
        w.add("files", sha256=f"s{k}", path=f"/p/{k}", width=1, height=1, status="noface",
              error="")
        w.flush()
    compact_cache(cache)
    assert load_cache(cache).compacted_through == 3
    seg = SegmentWriter(cache, load_cache(cache).meta)
    seg.add("files", sha256="s9", path="/p/9", width=1, height=1, status="noface", error="")
    assert seg.flush().name == "seg-00000004.npz"
    assert load_cache(cache).n_files == 4
    with np.load(seg.cache_path.with_name("c.npz.segments") / "seg-00000004.npz") as z:
        assert "compacted_through" not in json.loads(str(z["meta"]))


# ---- the writer refuses typos ------------------------------------------------------------
@pytest.mark.unit
def test_the_writer_refuses_an_unknown_or_missing_column_and_a_wrong_shape(tmp_path):
    w = SegmentWriter(tmp_path / "c.npz", META)
    with pytest.raises(CacheError, match="unknown column embeding"):
        w.add("faces", **{**_face("a", 0, 1.0), "embeding": np.zeros(4)})
    face = _face("a", 0, 1.0)
    del face["bbox"]
    with pytest.raises(CacheError, match="required column bbox missing"):
        w.add("faces", **face)
    with pytest.raises(CacheError, match=r"embedding has shape \(3,\), expected \(4,\)"):
        w.add("faces", **{**_face("a", 0, 1.0), "embedding": np.zeros(3)})
    with pytest.raises(CacheError, match="status is None"):
        w.add("files", sha256="a", path="/p", width=1, height=1, status=None, error="")
    # optional face columns stay optional; None in a float column is "unknown" (NaN)
    w.add("faces", **_face("a", 0, 1.0))
    w.add("faces", **dict(_face("a", 1, 1.0), landmark_3d_68=np.ones((68, 3))))
    w.flush()
    c = load_cache(tmp_path / "c.npz")
    assert np.isnan(c.faces["pose"]).all() and np.isnan(c.faces["landmark_3d_68"][0]).all()
    assert "landmark_2d_106" not in c.faces


@pytest.mark.unit
def test_the_writer_refuses_rows_of_another_dimension_before_writing(tmp_path):
    cache = tmp_path / "c.npz"
    w = SegmentWriter(cache, META)
    w.add("faces", **_face("a", 0, 1.0))
    w.flush()
    compact_cache(cache)
    with pytest.raises(CacheError, match="holds 4-D embeddings; refusing to add 8-D"):
        SegmentWriter(cache, dict(META, embedding_dim=8))
    assert not list_segments(cache) and load_cache(cache).n_faces == 1
