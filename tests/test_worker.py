"""The embed queue: stage -> worker (real subprocess, CPU) -> merge, against in-process embed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FACES, PACK, ROOT, copy_cache, run_cli
from facesets.formats.cache import list_segments, load_cache, update_meta
from facesets.io.fsutil import FileLock
from facesets.formats.queue import read_jsonl

EMBED_WORKER = ROOT / "work" / "embed_worker.py"


def run_worker(queue, out, *extra, check=True, script=EMBED_WORKER):
    proc = subprocess.run([sys.executable, str(script), str(queue), str(out), "--no-progress",
                           *map(str, extra)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if check and proc.returncode != 0:
        raise AssertionError(f"worker exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _sorted(table: dict, keys: tuple[str, ...]) -> dict:
    order = np.lexsort(tuple(table[k] for k in reversed(keys)))
    return {c: v[order] for c, v in table.items()}


def assert_same_records(got_path, want_path):
    """Record for record: same paths, files and faces; embeddings equal to float tolerance."""
    got, want = load_cache(got_path), load_cache(want_path)
    for name, keys in (("paths", ("path",)), ("files", ("sha256",)),
                       ("faces", ("sha256", "index"))):
        g, w = _sorted(getattr(got, name), keys), _sorted(getattr(want, name), keys)
        assert sorted(g) == sorted(w), name
        for col in w:
            if w[col].dtype.kind in "fc":
                np.testing.assert_allclose(g[col], w[col], rtol=1e-5, atol=1e-5,
                                           equal_nan=True, err_msg=f"{name}.{col}")
            else:
                assert np.array_equal(g[col], w[col]), f"{name}.{col}"
    for k in ("model", "model_id", "embedding_dim", "det_size", "has_landmarks", "sources"):
        assert got.meta.get(k) == want.meta.get(k), k


def _segment_rows(results_dir: Path) -> list[str]:
    """sha256 of every files row in every results segment (duplicates = work done twice)."""
    shas = []
    for seg in list_segments(results_dir / "results.npz"):
        with np.load(seg, allow_pickle=False) as z:
            if "files.sha256" in z.files:
                shas += z["files.sha256"].tolist()
    return shas


def test_killed_worker_resumes_and_merge_equals_in_process_embed(faces_cache, tmp_path):
    cache, queue, out = tmp_path / "c.npz", tmp_path / "q.json", tmp_path / "out"
    run_cli("embed", FACES, cache, "--stage-queue", queue, *PACK, "--no-progress")
    items = json.loads(queue.read_text())["items"]
    assert len(items) == sum(1 for _ in FACES.rglob("*.jpg"))
    assert not load_cache(cache, must_exist=False).n_files  # staging embeds nothing

    proc = subprocess.Popen([sys.executable, str(EMBED_WORKER), str(queue), str(out),
                             "--no-progress", "--flush-every", "15"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list_segments(out / "results.npz")) < 2:
        assert proc.poll() is None, "worker ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(set(_segment_rows(out)))
    assert 0 < done_before < len(items)

    second = run_worker(queue, out)
    assert f"already done {done_before}" in second.stdout
    shas = _segment_rows(out)
    assert sorted(shas) == sorted(it["id"] for it in items), "every item exactly once"
    assert not list((out / "results.npz.segments").glob(".*.tmp"))

    run_cli("embed", cache, "--merge-results", out)
    assert_same_records(cache, faces_cache)
    # merging again changes nothing
    run_cli("embed", cache, "--merge-results", out)
    assert_same_records(cache, faces_cache)


def _photo_folder(root: Path) -> Path:
    """A few real photos, a byte copy of one (alias), a broken JPEG and an odd file name."""
    src = root / "photos #1"
    (src / "ünï cødé").mkdir(parents=True)
    people = sorted(FACES.iterdir())[:2]
    for person in people:
        for f in sorted(person.iterdir())[:2]:
            shutil.copy2(f, src / f.name)
    first = sorted(src.glob("*.jpg"))[0]
    shutil.copy2(first, src / "ünï cødé" / "copy of #1.jpg")
    shutil.copy2(sorted(people[1].iterdir())[3], src / "ünï cødé" / "Zoë 日本.jpg")
    (src / "broken.jpg").write_bytes(first.read_bytes()[:200])
    return src


def test_missing_files_fail_then_path_map_and_aliases_match_in_process(tmp_path):
    src = _photo_folder(tmp_path)
    cache, queue, out = tmp_path / "c.npz", tmp_path / "q.json", tmp_path / "out"
    staged = run_cli("embed", src, cache, "--stage-queue", queue, *PACK, "--no-progress")
    assert "aliased 1" in staged.stdout
    items = json.loads(queue.read_text())["items"]
    assert [a["path"] for it in items for a in it["aliases"]] == [
        str(src / "ünï cødé" / "copy of #1.jpg")]

    moved = tmp_path / "elsewhere" / "mirror"
    moved.parent.mkdir()
    src.rename(moved)  # the worker sees the photos under another root
    failed = run_worker(queue, out)
    assert f"failed {len(items)}" in failed.stdout
    failures, _ = read_jsonl(out / "failures.jsonl")
    assert {f["id"] for f in failures} == {it["id"] for it in items}
    assert all("path mapping" in f["error"] for f in failures)

    mapped = run_worker(queue, out, "--path-map", f"{src}={moved}")
    assert f"done now {len(items)}" in mapped.stdout and "failed 0" in mapped.stdout
    assert "img/s; providers CPUExecutionProvider" in mapped.stdout
    moved.rename(src)
    run_cli("embed", cache, "--merge-results", out)
    merged = load_cache(cache)
    assert all(p.startswith(str(src)) for p in merged.paths["path"].tolist())  # queue paths
    assert "error" in merged.files["status"].tolist()                         # broken.jpg

    ref = tmp_path / "ref.npz"
    run_cli("embed", src, ref, *PACK, "--no-progress")
    assert_same_records(cache, ref)
    # nothing left to queue after the merge
    again = run_cli("embed", src, cache, "--stage-queue", tmp_path / "q2.json", *PACK,
                    "--no-progress")
    assert json.loads((tmp_path / "q2.json").read_text())["items"] == []
    assert f"unchanged {len(list(src.rglob('*.jpg')))}" in again.stdout


def test_the_serial_loop_workers_0_embeds_as_the_default_does(tmp_path):
    """--workers 0 is every worker's serial loop; the embed worker used to hand it to a
    thread pool of 0 threads and stop."""
    src = tmp_path / "p"
    src.mkdir()
    for photo in sorted(sorted(FACES.iterdir())[0].iterdir())[:3]:
        shutil.copy2(photo, src / photo.name)
    queue = tmp_path / "q.json"
    run_cli("embed", src, tmp_path / "c.npz", "--stage-queue", queue, *PACK, "--no-progress")
    serial, default = tmp_path / "serial", tmp_path / "default"
    assert "failed 0" in run_worker(queue, serial, "--workers", "0").stdout
    run_worker(queue, default)
    assert_same_records(serial / "results.npz", default / "results.npz")


def test_changed_file_is_a_failure_to_restage(tmp_path):
    src = tmp_path / "p"
    src.mkdir()
    photo = sorted(sorted(FACES.iterdir())[0].iterdir())[0]
    shutil.copy2(photo, src / "a.jpg")
    queue, out = tmp_path / "q.json", tmp_path / "out"
    run_cli("embed", src, tmp_path / "c.npz", "--stage-queue", queue, *PACK, "--no-progress")
    with open(src / "a.jpg", "ab") as fh:
        fh.write(b"\0" * 10)
    proc = run_worker(queue, out)
    assert "failed 1" in proc.stdout
    assert "re-stage" in read_jsonl(out / "failures.jsonl")[0][0]["error"]


def test_merge_refuses_another_model_and_a_held_lock(faces_cache, tmp_path):
    queue, out = tmp_path / "q.json", tmp_path / "out"
    src = tmp_path / "p"
    src.mkdir()
    shutil.copy2(sorted(sorted(FACES.iterdir())[0].iterdir())[0], src / "a.jpg")
    run_cli("embed", src, tmp_path / "stage.npz", "--stage-queue", queue, *PACK,
            "--no-progress")
    run_worker(queue, out)

    (tmp_path / "other").mkdir()
    (tmp_path / "same").mkdir()
    other = copy_cache(faces_cache, tmp_path / "other")
    update_meta(other, model="buffalo_l")
    before = other.read_bytes()
    proc = run_cli("embed", other, "--merge-results", out, check=False)
    assert proc.returncode == 2 and "buffalo_l" in proc.stderr and "model" in proc.stderr
    assert other.read_bytes() == before

    same = copy_cache(faces_cache, tmp_path / "same")
    with FileLock(str(same) + ".lock"):
        proc = run_cli("embed", same, "--merge-results", out, check=False)
    assert proc.returncode == 2 and "in use" in proc.stderr
    proc = run_cli("embed", same, "--merge-results", tmp_path / "nothing", check=False)
    assert proc.returncode == 2 and "embed_worker.py" in proc.stderr


@pytest.mark.unit
def test_worker_refuses_a_queue_of_another_kind(tmp_path):
    queue = tmp_path / "q.json"
    queue.write_text(json.dumps({"format": "face-sets/queue", "version": 1,
                                 "kind": "multiface", "params": {}, "items": []}))
    proc = run_worker(queue, tmp_path / "out", check=False)
    assert proc.returncode == 2 and "multiface worker" in proc.stderr


@pytest.mark.parametrize("script", ["embed_worker.py", "multiface_worker.py"])
def test_worker_runs_without_sklearn_torch_or_scenedetect(tmp_path, script):
    """Run a worker end to end in a fresh interpreter, then look at what it imported."""
    src = tmp_path / "p"
    (src / "fs" / "faces").mkdir(parents=True)
    png = src / "fs" / "faces" / "a.png"
    shutil.copy2(sorted(sorted(FACES.iterdir())[0].iterdir())[0], png)
    from facesets.io.fsutil import sha256_file
    from facesets.formats.queue import new_queue, write_queue
    if script == "embed_worker.py":
        queue = tmp_path / "q.json"
        run_cli("embed", src, tmp_path / "c.npz", "--stage-queue", queue, *PACK,
                "--no-progress")
    else:
        queue = tmp_path / "mq.json"
        write_queue(queue, new_queue(
            "multiface", {"model": PACK[1], "model_root": PACK[3], "det_size": 640,
                          "export": str(src)},
            [{"id": "fs/faces/a.png", "path": str(png), "faceset": "fs",
              "file": "faces/a.png", "size": png.stat().st_size, "sha256": sha256_file(png)}]))
    code = ("import runpy, sys, json\n"
            f"sys.argv = ['w', {str(queue)!r}, {str(tmp_path / 'out')!r}, '--no-progress']\n"
            "try:\n"
            f"    runpy.run_path({str(ROOT / 'work' / script)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    mods = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "onnxruntime" in mods and "facesets.backends.insightface_backend" in mods
    for banned in ("sklearn", "torch", "scenedetect", "faiss", "hnswlib",
                   "facesets.engine", "facesets.steps.cluster"):
        assert banned not in mods, banned


@pytest.mark.parametrize("script, model_batch", [("embed_worker.py", False),
                                                 ("multiface_worker.py", False),
                                                 ("video_face_worker.py", False),
                                                 ("clip_worker.py", True)])
def test_worker_help_names_the_flush_window_and_hides_the_old_batch(script, model_batch):
    from facesets.runtime.jobs import DEFAULT_FLUSH_EVERY

    proc = subprocess.run([sys.executable, str(ROOT / "work" / script), "--help"],
                          capture_output=True, text=True, check=True)
    options = proc.stdout[proc.stdout.index("options:"):]
    assert "--flush-every N       write results durably every N items" in options
    assert f"({DEFAULT_FLUSH_EVERY}" in options.split("--flush-every N", 1)[1][:120]
    assert "--batch " not in proc.stdout and "--batch N" not in proc.stdout
    assert ("--batch-size N" in options) is model_batch
