"""Kill a real `sort_faces.py` subprocess with SIGKILL at its Nth file commit.

Every file face-sets commits goes through ``os.replace`` (fsutil.atomic_write, the audit's
moves, the placing of photos), so the Nth call is the Nth commit point. ``before`` kills just
before it (the temp file is written, not yet in place: what a kill in the middle of a write
leaves), ``after`` just after it. No hook in the code under test: the subprocess wraps
``os.replace`` and then runs the ordinary command line.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_WRAPPER = """
import atexit, os, signal, sys
sys.path.insert(0, {root!r})
kill_at, mode = int(sys.argv[1]), sys.argv[2]
real_replace, calls = os.replace, [0]
def replace(*args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at and mode == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real_replace(*args, **kwargs)
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
os.replace = replace
atexit.register(lambda: sys.stderr.write("COMMITS %d\\n" % calls[0]))
from facesets.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_killed(args: list, kill_at: int = 0, mode: str = "after"
               ) -> subprocess.CompletedProcess:
    """Run the command line ``args``; SIGKILL at commit ``kill_at`` (0: never)."""
    return subprocess.run([sys.executable, "-c", _WRAPPER.format(root=str(ROOT)),
                           str(kill_at), mode, *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def count_commits(args: list) -> int:
    """Run ``args`` to the end (it must succeed); the number of commits it made."""
    proc = run_killed(args)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.rsplit("COMMITS ", 1)[1].split()[0])


def was_killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def without_times(obj, keys=("when", "created", "seconds")):
    """A JSON document with its timestamps removed (they differ between two equal runs)."""
    if isinstance(obj, dict):
        return {k: without_times(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without_times(v, keys) for v in obj]
    return obj


def snapshot(root: Path) -> dict[str, object]:
    """Every file under ``root``: JSON files without timestamps, the rest as bytes."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() or p.is_symlink():
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("symlink", str(p.readlink()))
            elif p.suffix == ".json":
                out[rel] = without_times(json.loads(p.read_bytes()))
            else:
                out[rel] = p.read_bytes()
    return out
