"""work/run_embed_chain.sh in its local-Python mode: stage -> worker -> merge -> cluster,
killed mid-worker and resumed at the first unfinished step."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import FACES, PACK, ROOT, TEST_THRESHOLD, run_cli
from facesets.formats.cache import list_segments
from facesets.formats.manifest import CLUSTER_MANIFEST, load_manifest
from test_worker import assert_same_records

CHAIN = ROOT / "work" / "run_embed_chain.sh"


def chain_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WSL_DISTRO_NAME", "WIN_PYTHON")}
    env.update(PYTHON=sys.executable, CHAIN_STATE_DIR=str(tmp_path / "state"),
               CHAIN_LOG_DIR=str(tmp_path / "logs"), CLUSTER_OPTS=f"--threshold {TEST_THRESHOLD}",
               PYTHONUNBUFFERED="1", **extra)
    return env


def chain_args(src, cache, raw) -> list[str]:
    return ["bash", str(CHAIN), str(src), str(cache), "--cluster", str(raw), "--", *PACK]


def test_chain_killed_mid_worker_resumes_at_the_first_unfinished_step(tmp_path):
    src = tmp_path / "photos"
    for person in ("Tony_Blair", "Vladimir_Putin"):
        shutil.copytree(FACES / person, src / person)
    cache, raw, state = tmp_path / "c.npz", tmp_path / "raw", tmp_path / "state"
    env = chain_env(tmp_path, WORKER_OPTS="--flush-every 2 --no-progress")

    first = subprocess.Popen(chain_args(src, cache, raw), env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list_segments(state / "results" / "results.npz"):
        assert first.poll() is None, "chain ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the chain and its worker, as a crash would
    first.wait()
    while time.monotonic() < deadline:  # until the orphaned worker is reaped too
        try:
            os.killpg(first.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert (state / "steps.done").read_text().split() == ["stage"]

    second = subprocess.run(chain_args(src, cache, raw), env=env, capture_output=True,
                            text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert "stage: already done" in out
    assert "already done 0," not in out, "the worker resumed from its own results"
    assert (state / "steps.done").read_text().split() == [
        "stage", "worker", "merge", "cluster", "complete"]
    logs = sorted(p.name.split("-")[0] for p in (tmp_path / "logs").iterdir())
    assert logs == ["cluster", "merge", "stage", "worker", "worker"]
    load_manifest(raw / "manifest.json", CLUSTER_MANIFEST)

    ref = tmp_path / "ref.npz"
    run_cli("embed", src, ref, *PACK, "--no-progress")
    assert_same_records(cache, ref)

    # a finished chain run again is a new, incremental run: nothing new to embed
    third = subprocess.run(chain_args(src, cache, raw), env=env, capture_output=True,
                           text=True)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "queued 0" in third.stdout and "stage: already done" not in third.stdout
    assert_same_records(cache, ref)


def test_chain_stops_at_a_failing_step_with_an_error(tmp_path):
    src = tmp_path / "photos"
    shutil.copytree(FACES / "Tony_Blair", src)
    env = chain_env(tmp_path, WORKER_OPTS="--providers NoSuchExecutionProvider")
    proc = subprocess.run(chain_args(src, tmp_path / "c.npz", tmp_path / "raw"), env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "step worker failed" in proc.stderr and "NoSuchExecutionProvider" in proc.stdout
    assert (tmp_path / "state" / "steps.done").read_text().split() == ["stage"]
    bad = subprocess.run(["bash", str(CHAIN), str(tmp_path / "missing"), "c.npz"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "no such folder" in bad.stderr
