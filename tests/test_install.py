"""`pip install .` gives the `face-sets` command: the same main as sort_faces.py, with the
package data (the review page, the scorers' prompts), run from outside the checkout."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import FACES, PACK, needs_shared

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                       **kw)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r


def test_pip_install_gives_the_face_sets_command(tmp_path):
    needs_shared()
    # the sources as a clone has them (a build writes build/ and *.egg-info beside them)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "work", "tests", "bench", ".venv*", "__pycache__", "*.egg-info", "build"))
    venv = tmp_path / "venv"
    # the dependencies come from this Python's site-packages (installed already: CI's venv,
    # or the system's), named in a .pth file: only face-sets is installed. (A venv made
    # from a venv with --system-site-packages would see the base Python's, not this one's.)
    _run(sys.executable, "-m", "venv", venv)
    py, command = venv / "bin" / "python", venv / "bin" / "face-sets"
    purelib = _run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
                   ).stdout.strip()
    deps = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"],
                                      sysconfig.get_paths()["platlib"]]) if Path(p).is_dir()]
    Path(purelib, "facesets_test_deps.pth").write_text("\n".join(deps) + "\n")
    _run(py, "-m", "pip", "install", "-q", "--no-deps", src)
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, HOME=str(home))
    env.pop("FACESETS_WORK_DIR", None)
    r = _run(command, "--help", cwd=elsewhere, env=env)
    assert r.stdout.startswith("usage: face-sets ") and "export-swap" in r.stdout
    # the groups, and an old name that still works (the installed entry point is cli.main)
    assert "faceset VERB" in r.stdout and "    library import " in r.stdout
    assert "    drop-faces" not in r.stdout   # listed only in the line on old names
    assert _run(command, "drop-faces", "--help", cwd=elsewhere, env=env).stdout.startswith(
        "usage: face-sets faceset drop ")
    assert _run(command, "--version", cwd=elsewhere, env=env).stdout.startswith("face-sets ")
    # the installed package, its data, and its work folder (no checkout around it)
    r = _run(py, "-c", "import facesets, importlib.resources as r; "
             "from facesets.runtime.pipeline import work_dir; print(facesets.__file__); "
             "print(r.files('facesets.review').joinpath('static/index.html').is_file(), "
             "r.files('facesets.scorers').joinpath('occlusion_prompts.json').is_file(), "
             "r.files('facesets.backends').joinpath('meanshape_68.json').is_file()); "
             "print(work_dir())", cwd=elsewhere, env=env)
    where, data, work = r.stdout.splitlines()
    assert Path(where).is_relative_to(venv) and data == "True True True"
    assert Path(work) == home / ".face-sets" / "work"
    # a real command from the installed package
    photos = elsewhere / "photos"
    for f in sorted(sorted(d for d in FACES.iterdir() if d.is_dir())[0].iterdir())[:2]:
        photos.mkdir(exist_ok=True)
        shutil.copy(f, photos / f.name)
    r = _run(command, "embed", photos, "c.npz", *PACK, "--no-progress", cwd=elsewhere, env=env)
    assert "embed: files seen 2" in r.stdout and (elsewhere / "c.npz").is_file()
    # the hints name the installed command (there is no sort_faces.py here)
    r = subprocess.run([str(command), "cluster", "no_such.npz", "out"], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no such cache; run `face-sets embed SRC" in r.stderr, r.stderr
