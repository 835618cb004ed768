"""`./face-sets` on a fresh clone: the first call makes .venv/ and installs into it, later
calls only run, an install killed half-way is done again.

pip resolves the requirements from the configured package index. Installing every wheel
into an empty venv takes minutes, so the test asks the script for a venv that sees this
Python's packages (FACESETS_VENV_ARGS=--system-site-packages, which the script honours):
pip still resolves and checks every requirement, but has nothing to download. A full
install into an empty venv is measured by hand (see the README's Install section)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs git and a git checkout")
# --without-pip: the venv runs this Python's pip (seen through the system site-packages),
# which installs into the venv; making a venv with its own pip takes ~10-40 s more
ENV = dict(os.environ, FACESETS_VENV_ARGS="--system-site-packages --without-pip",
           PIP_NO_INPUT="1")


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of this repository's committed HEAD."""
    dest = tmp_path_factory.mktemp("clone") / "face-sets"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    assert not (dest / ".venv").exists()
    return dest


def bootstrap(clone: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(clone / "face-sets"), *args], cwd=clone.parent, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_first_call_installs_then_runs_and_later_calls_only_run(clone):
    first = bootstrap(clone, "--help")
    assert first.returncode == 0, first.stderr[-3000:]
    # stdout stays clean; usage and hints name the script as it was called
    assert first.stdout.startswith(f"usage: {clone / 'face-sets'}\n"), first.stdout
    assert "face-sets: setting up" in first.stderr and "face-sets: ready" in first.stderr
    venv = clone / ".venv"
    assert (venv / ".face-sets-installed").is_file()
    assert not (venv / ".face-sets-installing").exists()
    assert "system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    # the clone's git status stays clean: .venv/ is ignored
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, check=True,
                            capture_output=True, text=True).stdout
    assert status == "", status

    t0 = time.monotonic()
    again = bootstrap(clone, "cluster", "--help")
    assert again.returncode == 0 and \
        " ".join(again.stdout.split()).startswith(f"usage: {clone / 'face-sets'} cluster ")
    assert again.stderr == "" and time.monotonic() - t0 < 30       # no second install
    # a hint to type a command names the script too, not sort_faces.py
    hint = bootstrap(clone, "cluster", "no_such.npz", "out")
    assert hint.returncode != 0 and \
        f"no such cache; run `{clone / 'face-sets'} embed SRC" in hint.stderr, hint.stderr
    # and the venv's Python is the one that ran: it imports face-sets' dependencies
    py = venv / "bin" / "python"
    probe = subprocess.run([str(py), "-c", "import sys, pillow_heif; print(sys.prefix)"],
                           capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()) == venv


def test_changed_requirements_reinstall_and_a_killed_install_is_done_again(clone):
    """(after the test above) a changed requirements file starts an install; killed
    half-way, the next call makes the venv again and finishes it."""
    assert (clone / ".venv" / ".face-sets-installed").is_file()
    with open(clone / "requirements.txt", "a") as fh:
        fh.write("# changed\n")
    busy = clone / ".venv" / ".face-sets-installing"
    proc = subprocess.Popen([str(clone / "face-sets"), "--help"], cwd=clone.parent, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not busy.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert busy.exists(), "the install never started"
    os.killpg(proc.pid, signal.SIGKILL)   # mid-install
    _, err = proc.communicate()
    assert b"face-sets: setting up" in err
    assert not (clone / ".venv" / ".face-sets-installed").exists()

    redo = bootstrap(clone, "--help")
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert "face-sets: setting up" in redo.stderr and redo.stdout.startswith("usage:")
    assert (clone / ".venv" / ".face-sets-installed").is_file() and not busy.exists()
    assert "# changed" in (clone / ".venv" / ".face-sets-installed").read_text()
    subprocess.run(["git", "checkout", "-q", "requirements.txt"], cwd=clone, check=True)


def test_python_sort_faces_keeps_working_without_the_script(clone):
    r = subprocess.run(["python3", str(clone / "sort_faces.py"), "--help"],
                       capture_output=True, text=True, cwd=clone.parent)
    assert r.returncode == 0 and r.stdout.startswith("usage: sort_faces.py")
