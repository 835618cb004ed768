"""The overlapped job loop (runtime.jobs.prefetch), progress off a terminal, the providers
line, and fixed-batch ONNX graphs; the occlusion worker run as the user runs it (a real
subprocess over real PNGs, an ONNX classifier the tests build) with the overlap on and off,
killed with kill -9 and interrupted with Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, kill_once_flushed
from onnx_models import expected_occluded, occlusion_classifier

CLIP_WORKER = ROOT / "work" / "clip_worker.py"


# ---- prefetch ------------------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_prefetch_keeps_order_and_bounds_the_work_ahead(workers):
    from facesets.runtime.jobs import prefetch

    started, lock = [], threading.Lock()

    def prepare(i):
        with lock:
            started.append(i)
        time.sleep(0.001 * (7 - i % 7))     # later items often finish first
        return i * i

    got = []
    for item, value in prefetch(range(40), prepare, workers, ahead=5):
        with lock:
            # never more than `ahead` items beyond the one handed out (serial: none)
            assert max(started) - item <= (5 if workers else 0)
        got.append((item, value))
    assert got == [(i, i * i) for i in range(40)]


@pytest.mark.unit
def test_prefetch_raises_at_the_failing_item_and_stops_on_close():
    from facesets.runtime.jobs import prefetch

    def prepare(i):
        if i == 3:
            raise OSError("disk")
        return i

    seen = []
    with pytest.raises(OSError):
        for item, _ in prefetch(range(10), prepare, 2):
            seen.append(item)
    assert seen == [0, 1, 2]

    calls = []
    gen = prefetch(range(1000), lambda i: calls.append(i) or i, 2, ahead=4)
    assert next(gen) == (0, 0)
    gen.close()
    time.sleep(0.05)
    assert len(calls) <= 8, "closing the generator cancels what has not started"


# ---- progress ------------------------------------------------------------------------------
@pytest.mark.unit
def test_progress_off_a_terminal_is_plain_lines(capsys, monkeypatch):
    from facesets.runtime.jobs import Job, OK, run_items

    class Echo(Job):
        def process(self, items):
            for item in items:
                yield item, OK, ""

    monkeypatch.setenv("FACESETS_PROGRESS_EVERY", "0")
    run_items(Echo(), list(range(5)), flush_every=2, progress=True, desc="scoring", unit="png")
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and "\x1b" not in err
    assert lines[0].startswith("scoring: 1/5 (20%), ") and " png/s" in lines[0]
    assert "ETA" in lines[0] and lines[-1].startswith("scoring: 5/5 (100%)")

    monkeypatch.setenv("FACESETS_PROGRESS_EVERY", "3600")
    run_items(Echo(), list(range(5)), flush_every=2, progress=True, desc="scoring", unit="png")
    assert len(capsys.readouterr().err.strip().splitlines()) == 1, "only the last line"


@pytest.mark.unit
def test_every_progress_bar_goes_through_runtime_progress():
    """tqdm is imported by runtime/progress.py alone: every other bar is progress_bar, so a
    chain's log file gets plain lines, never carriage-return redraws."""
    package = ROOT / "facesets"
    users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                   if "tqdm" in p.read_text(encoding="utf-8"))
    assert users == ["runtime/jobs.py", "runtime/progress.py"]
    assert "import tqdm" not in (package / "runtime" / "jobs.py").read_text()


def test_video_scenes_progress_in_a_log_is_plain_lines(tmp_path):
    """A step that used tqdm directly (video scenes), its stderr to a file as in a chain."""
    from conftest import VIDEO, needs_shared, run_cli

    needs_shared()
    videos = tmp_path / "videos"
    videos.mkdir()
    for clip in VIDEO.glob("*.mp4"):
        os.symlink(clip, videos / clip.name)
    proc = run_cli("video", "scenes", videos, tmp_path / "state",
                   env={"FACESETS_PROGRESS_EVERY": "0"})
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("scenes: ")]
    assert lines and lines[-1].startswith("scenes: 3/3 (100%)"), proc.stderr


# ---- providers and fixed batches -----------------------------------------------------------
@pytest.mark.unit
def test_providers_note_names_what_ran_and_warns_on_a_fallback():
    from facesets.backends.base import providers_note

    assert providers_note(["CPUExecutionProvider"], ["CPUExecutionProvider"]) == \
        "providers CPUExecutionProvider"
    note = providers_note(["DmlExecutionProvider", "CPUExecutionProvider"],
                          ["CPUExecutionProvider"])
    assert note.startswith("providers CPUExecutionProvider (WARNING: DmlExecutionProvider")
    assert "FELL BACK TO THE CPU" in note
    assert "WARNING" not in providers_note(["DmlExecutionProvider", "CPUExecutionProvider"],
                                           ["DmlExecutionProvider", "CPUExecutionProvider"])
    assert "WARNING" in providers_note(["torch:cuda"], ["torch:cpu"])


@pytest.mark.unit
def test_a_batch_1_classifier_scores_any_batch_in_chunks_of_one(tmp_path):
    from facesets.scorers import scorer_from_spec

    colours = [(0, 0, 0), (200, 150, 120), (90, 90, 90), (255, 255, 255), (10, 200, 30)]
    crops = [np.full((300, 200, 3), c, np.uint8) for c in colours]
    fixed = scorer_from_spec(f"onnx:{occlusion_classifier(tmp_path / 'one.onnx', batch=1)}",
                             batch_size=4)
    free = scorer_from_spec(f"onnx:{occlusion_classifier(tmp_path / 'n.onnx')}", batch_size=4)
    assert fixed.fixed_batch == 1 and free.fixed_batch is None
    got = fixed.score(crops)
    assert got == free.score(crops)
    for c, g in zip(colours, got):
        assert g["occluded"] == pytest.approx(expected_occluded(c), abs=1e-4)
    # one crop prepared then scored is the same to the bit as score()
    assert fixed.score_prepared([fixed.prepare(c) for c in crops]) == got


# ---- the occlusion worker, overlapped and serial --------------------------------------------
def make_queue(tmp: Path, n: int, broken: tuple[int, ...] = ()) -> Path:
    """N face PNGs (half with a black lower band) under tmp/export, an occlusion queue over
    them; the PNGs in ``broken`` are then truncated (unreadable: ERROR records)."""
    from PIL import Image

    from facesets.formats.queue import KIND_OCCLUSION, new_queue, write_queue
    from facesets.io.fsutil import sha256_file

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        faceset, file = f"fs_{i // 25:02d}", f"faces/{i % 25:03d}.png"
        png = tmp / "export" / faceset / file
        png.parent.mkdir(parents=True, exist_ok=True)
        px = rng.integers(0, 256, (60 + i % 5, 48, 3), dtype=np.uint8)
        if i % 2:
            px[px.shape[0] // 2:] = 0
        Image.fromarray(px).save(png)
        if i in broken:
            png.write_bytes(png.read_bytes()[:40])
        items.append({"id": f"{faceset}/{file}", "path": str(png), "faceset": faceset,
                      "file": file, "key": f"k{i}", "size": png.stat().st_size,
                      "sha256": sha256_file(png)})
    queue = tmp / "queue.json"
    write_queue(queue, new_queue(KIND_OCCLUSION, {"export": str(tmp / "export"),
                                                  "export_run": "t"}, items))
    return queue


def worker(queue: Path, results: Path, *extra, check=True, **kw):
    proc = subprocess.run([sys.executable, str(CLIP_WORKER), str(queue), str(results),
                           *map(str, extra)], capture_output=True, text=True, **kw)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def records(results: Path) -> dict[str, str]:
    out = {}
    for line in results.read_text().splitlines():
        out[json.loads(line)["id"]] = line
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A queue of 60 PNGs (two unreadable, one gone), scored serially: the reference."""
    tmp = tmp_path_factory.mktemp("overlap")
    queue = make_queue(tmp, 60, broken=(7, 31))
    (tmp / "export" / "fs_01" / "faces" / "014.png").unlink()     # item 39: FAILED
    model = occlusion_classifier(tmp / "c.onnx")
    serial = tmp / "serial.jsonl"
    proc = worker(queue, serial, "--scorer", f"onnx:{model}", "--flush-every", "4",
                  "--batch-size", "4", "--workers", "0")
    return tmp, queue, model, serial, proc


def test_overlapped_worker_writes_the_serial_bytes(scored, tmp_path):
    tmp, queue, model, serial, sproc = scored
    out = tmp_path / "overlap.jsonl"
    # no --no-progress: output that is not a terminal gets plain progress lines, not bars
    proc = worker(queue, out, "--scorer", f"onnx:{model}", "--flush-every", "4",
                  "--batch-size", "4", "--workers", "3",
                  env=dict(os.environ, FACESETS_PROGRESS_EVERY="0"))
    assert out.read_bytes() == serial.read_bytes()
    assert len(records(out)) == 59
    assert sum('"error"' in line for line in records(out).values()) == 2
    for p in (sproc, proc):
        assert "done now 59 (noface 0, unreadable 2, scored 57), failed 1" in p.stdout
        assert p.stdout.rstrip().endswith("png/s; providers CPUExecutionProvider (see "
                                          f"{p.args[3]}.failures.jsonl)")
    assert "\r" not in proc.stderr and "occlusion worker: 60/60 (100%)" in proc.stderr


def test_overlapped_worker_resumes_after_kill_and_ctrl_c(scored, tmp_path):
    tmp, queue, model, serial, _ = scored
    want = records(serial)
    args = ["--scorer", f"onnx:{model}", "--flush-every", "2", "--batch-size", "2",
            "--workers", "3", "--no-progress"]
    for sig, code in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)):
        out = tmp_path / f"{sig.name}.jsonl"
        r = kill_once_flushed([sys.executable, CLIP_WORKER, queue, out, *args], out, sig)
        assert r.returncode == code, r.stderr
        if sig == signal.SIGINT:
            assert "interrupted: re-run the same command to resume" in r.stdout
        body = out.read_bytes()
        assert body.endswith(b"\n"), "only whole records are flushed"
        done = records(out)
        assert 2 <= len(done) < 59 and all(want[k] == v for k, v in done.items())
        again = worker(queue, out, *args)
        assert f"already done {len(done)}" in again.stdout
        assert records(out) == want


# ---- the clip scorer offline ---------------------------------------------------------------
def test_clip_offline_fails_in_seconds_naming_weights_and_export_onnx(tmp_path):
    """No hub (a closed port as its endpoint) and an empty cache: one error line, at once,
    instead of a minute of retries and a message cut mid-word."""
    from conftest import run_cli

    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9",
           "HTTPS_PROXY": "", "https_proxy": "", "HF_HUB_OFFLINE": ""}
    t = time.monotonic()
    proc = run_cli("occlusion", "export-onnx", tmp_path / "x.onnx", check=False, env=env)
    assert proc.returncode == 2 and time.monotonic() - t < 60
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'dfn2b_s39b' are not in the Hugging Face cache" in errors[0]
    assert "127.0.0.1:9 cannot be reached" in errors[0]
    assert "--weights FILE" in errors[0] and "occlusion export-onnx" in errors[0]
    assert "Please check your connection" not in proc.stderr and not (tmp_path / "x.onnx").exists()
