"""Shared fixtures: the real test photos and model pack in ../shared, embedded once.

Tests marked ``unit`` need neither ../shared nor a model (``pytest -m unit`` runs them in
seconds). Without ../shared every other test is skipped with the reason; FACESETS_SHARED
names another folder to use instead of ../shared (pointing it nowhere shows what runs
without it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The tests press Ctrl-C on the commands they start (SIGINT). A suite started in the
# background of a shell without job control (`cmd &` in a script, nohup) inherits SIGINT
# ignored, and an ignored signal stays ignored across exec: every child would shrug the
# Ctrl-C off. A handler here is reset to the default at each exec, so the children get
# Python's KeyboardInterrupt as a user's terminal gives them.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FACESETS_SHARED") or ROOT.parent / "shared").resolve()
FACES = SHARED / "testdata" / "faces"
GROUP = SHARED / "testdata" / "group"
VIDEO = SHARED / "testdata" / "video"
PACK = ["--model", "testpack_s", "--model-root", str(SHARED / "insightface")]
# testpack_s (128-D MobileFaceNet) has no built-in thresholds: these separate the 20 LFW
# identities (pairwise F = 1.0 from 0.60 to 0.75 on the centre faces)
TEST_THRESHOLD = "0.65"
# the LFW faces are 60-110 px: quality gates lowered for them
LOW_GATES = ["--min-short", "20", "--min-blur", "0", "--min-det-score", "0.5"]

HAVE_SHARED = FACES.is_dir()
NO_SHARED = (f"{SHARED} is missing: this test needs the test photos and model pack in "
             "../shared beside the checkout (or FACESETS_SHARED)")
# these modules list ../shared's photos when imported: without it they cannot be collected
SHARED_AT_IMPORT = ["test_fuzz_readers.py", "test_kill_commits.py"]
collect_ignore = [] if HAVE_SHARED else SHARED_AT_IMPORT


def pytest_report_header(config):
    if not HAVE_SHARED:
        return [NO_SHARED.replace("this test needs", "tests needing"),
                f"not collected: {', '.join(SHARED_AT_IMPORT)}; other tests not marked "
                "unit are skipped"]
    return None


def pytest_collection_modifyitems(config, items):
    """Without ../shared, skip every test not marked ``unit`` (they all need it)."""
    if HAVE_SHARED:
        return
    skip = pytest.mark.skip(reason=NO_SHARED)
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(skip)


def needs_shared() -> None:
    """Skip the calling test or fixture when ../shared is missing."""
    if not HAVE_SHARED:
        pytest.skip(NO_SHARED)


def kill_once_flushed(argv: list, log: Path, sig: int, wait_s: float = 60
                      ) -> subprocess.CompletedProcess:
    """Run a worker ``argv`` and send it ``sig`` once ``log`` holds two whole records (a kill
    mid-run); returns the finished process with its output, as the workers' resume tests
    check it."""
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and log.read_bytes().count(b"\n") >= 2:
            os.kill(proc.pid, sig)
            break
        time.sleep(0.001)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_cli(*args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run `python sort_faces.py ARGS` as a real subprocess; returns the completed process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(kw.pop("env", {}))
    proc = subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=kw.pop("cwd", ROOT),
                          **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"sort_faces.py {' '.join(map(str, args))} exited "
                             f"{proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def identity_of(path: str) -> str:
    """Ground truth: the LFW person folder a test photo lives in."""
    return Path(path).parent.name


@pytest.fixture(scope="session")
def faces_cache(tmp_path_factory) -> Path:
    """A cache of all 180 test faces photos (embedded once per test session). Read-only:
    copy it (copy_cache) before changing it."""
    needs_shared()
    cache = tmp_path_factory.mktemp("faces_cache") / "faces.npz"
    run_cli("embed", FACES, cache, *PACK, "--no-progress")
    return cache


@pytest.fixture(scope="session")
def group_cache(tmp_path_factory) -> Path:
    """A cache of the test faces plus the multi-person group photos. Read-only."""
    needs_shared()
    root = tmp_path_factory.mktemp("group_cache")
    cache = root / "group.npz"
    run_cli("embed", FACES, cache, *PACK, "--no-progress")
    run_cli("embed", GROUP, cache, *PACK, "--no-progress")
    return cache


def copy_cache(src: Path, dest_dir: Path) -> Path:
    """Copy a cache (base + segments) so a test can change it."""
    import shutil

    dest = dest_dir / src.name
    shutil.copy2(src, dest)
    seg = Path(str(src) + ".segments")
    if seg.is_dir():
        shutil.copytree(seg, Path(str(dest) + ".segments"))
    return dest


def all_parsers(parser, name: str = ""):
    """(command words, parser) of every parser under an argparse ``parser``, itself first."""
    import argparse

    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from all_parsers(sub, f"{name} {sub_name}".strip())


def wait_for_page(page, expression: str, timeout_s: float = 30.0) -> None:
    """Wait until the JavaScript ``expression`` is true on ``page``. Playwright's
    wait_for_function polls a string predicate with eval inside the page, which the review
    page's Content Security Policy (script-src 'self') refuses whenever the first check is
    not already true (a loaded machine); page.evaluate goes through DevTools, which the
    policy does not govern."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never had {expression} within {timeout_s} s")
        time.sleep(0.05)
