"""The video face worker with its frames decoded on a thread (runtime.jobs.prefetch_stream)
while the model looks at the previous ones: the same records in the same order as the serial
loop (--workers 0), and a resume after kill -9 and Ctrl-C that ends with the same records.
Real clips of ../shared, the real worker script as a subprocess."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import PACK, ROOT, VIDEO, kill_once_flushed, needs_shared, run_cli
from facesets.formats import video as vf

WORKER = ROOT / "work" / "video_face_worker.py"
BROKEN = "video_chunk_6s.mp4"   # replaced by garbage after staging: an error record


# ---- prefetch_stream -----------------------------------------------------------------------
def _produce(i):
    if i == 3:
        raise OSError(f"item {i} unreadable")
    for j in range(i % 4):
        time.sleep(0.001 * ((i + j) % 3))
        yield i, j


def _drain(stream):
    out = []
    for item, values in stream:
        try:
            out.append((item, list(values)))
        except OSError as exc:
            out.append((item, str(exc)))
    return out


@pytest.mark.unit
def test_prefetch_stream_gives_the_serial_values_in_order_with_errors_at_their_item():
    from facesets.runtime.jobs import prefetch_stream

    serial = _drain(prefetch_stream(range(12), _produce, 3, background=False))
    assert serial[3] == (3, "item 3 unreadable")
    assert serial[7] == (7, [(7, 0), (7, 1), (7, 2)])
    assert _drain(prefetch_stream(range(12), _produce, 3)) == serial
    # values the caller leaves unread do not leak into the next item
    firsts = [(item, next(iter(values), None)) for item, values in
              prefetch_stream([1, 2, 5, 6, 7], _produce, 2)]
    assert firsts == [(1, (1, 0)), (2, (2, 0)), (5, (5, 0)), (6, (6, 0)), (7, (7, 0))]

    def eager(i):   # not a generator: raises when called, on the thread
        if i == 1:
            raise OSError("cannot open")
        return [i]
    assert _drain(prefetch_stream(range(3), eager, 2)) == [(0, [0]), (1, "cannot open"),
                                                          (2, [2])]


@pytest.mark.unit
def test_prefetch_stream_bounds_the_work_ahead_and_stops_on_close():
    from facesets.runtime.jobs import prefetch_stream

    made, lock = [], threading.Lock()

    def produce(i):
        for j in range(50):
            with lock:
                made.append((i, j))
            yield i, j

    pulled = []   # items are taken from the iterable in the caller's thread
    source = (pulled.append(threading.current_thread()) or i for i in range(4))
    stream = prefetch_stream(source, produce, ahead=5)
    seen = 0
    for item, values in stream:
        for value in values:
            seen += 1
            with lock:   # at most `ahead` values made beyond those taken, plus one in hand
                assert len(made) - seen <= 5 + 1
        if item == 1:
            break
    stream.close()   # returns once the thread has stopped
    stopped_at = len(made)
    time.sleep(0.1)
    assert len(made) == stopped_at < 4 * 50, "the thread stops once the stream is closed"
    assert set(pulled) == {threading.current_thread()}


# ---- the worker, overlapped and serial -----------------------------------------------------
def records(log) -> list[str]:
    """frames.jsonl's records without their timings (wall-clock seconds), in file order."""
    out = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        rec.pop("timing", None)
        out.append(json.dumps(rec, sort_keys=True))
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A video queue over the real clips at 4 fps (~100 frames), one clip then broken; the
    serial worker's results."""
    needs_shared()
    root = tmp_path_factory.mktemp("video_overlap")
    videos = root / "videos"
    videos.mkdir()
    for clip in VIDEO.glob("*.mp4"):
        os.symlink(clip, videos / clip.name)
    state = root / "state"
    run_cli("video", "scenes", videos, state, "--no-progress")
    run_cli("video", "stage", state, *PACK, "--fps", "4", "--det-size", "320")
    size = (videos / BROKEN).stat().st_size   # same size: it passes the worker's check
    (videos / BROKEN).unlink()
    (videos / BROKEN).write_bytes((b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16)
                                  .ljust(size, b"\x00")[:size])
    queue = state / "queue.json"
    serial = root / "serial"
    proc = worker(queue, serial, "--workers", "0", "--flush-every", "2")
    return queue, serial, proc


def worker(queue, out, *extra, check=True):
    proc = subprocess.run([sys.executable, str(WORKER), str(queue), str(out), "--no-progress",
                           *map(str, extra)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_overlapped_worker_writes_the_serial_records(staged, tmp_path):
    queue, serial, sproc = staged
    out = tmp_path / "overlap"
    proc = worker(queue, out, "--workers", "2", "--flush-every", "2")
    want = records(serial / vf.FRAMES_LOG)
    assert records(out / vf.FRAMES_LOG) == want
    items = json.loads(queue.read_text())["items"]
    assert len(want) == len(items)
    broken = [json.loads(r) for r in want if BROKEN in json.loads(r)["path"]]
    assert broken and all(r["status"] == "error" and r["error"] for r in broken)
    frames = sum(len(json.loads(r)["frames"]) for r in want)
    assert frames > 50
    for p in (sproc, proc):
        assert f"frames {frames}," in p.stdout and "failed 0" in p.stdout, p.stdout


def test_overlapped_worker_resumes_after_kill_and_ctrl_c(staged, tmp_path):
    queue, serial, _ = staged
    want = records(serial / vf.FRAMES_LOG)
    args = ["--workers", "2", "--flush-every", "1", "--no-progress"]
    for sig, code in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)):
        out = tmp_path / sig.name
        log = out / vf.FRAMES_LOG
        r = kill_once_flushed([sys.executable, WORKER, queue, out, *args], log, sig,
                              wait_s=120)
        assert r.returncode == code, r.stderr
        if sig == signal.SIGINT:
            assert "interrupted: re-run the same command to resume" in r.stdout
        assert log.read_bytes().endswith(b"\n"), "only whole records are flushed"
        done = records(log)
        assert 2 <= len(done) < len(want) and done == want[:len(done)]
        again = worker(queue, out, *args)
        assert f"already done {len(done)}" in again.stdout
        assert records(log) == want
