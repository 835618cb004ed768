"""The command line imports only the command that runs: `--help` and `COMMAND --help` load
no numpy, OpenCV, ONNX Runtime or torch (checked with `python -X importtime`, as the user
runs sort_faces.py; timings live in bench/, not here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facesets.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("cv2", "numpy", "onnxruntime", "torch", "insightface", "sklearn")
# commands with neither model nor engine options (nor a step's defaults): not even numpy
LIGHT = ("consolidate", "dedup-optimize", "rename", "drop-faces", "move-face", "quarantine",
         "history", "undo", "report", "review")


def _help(*words: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `sort_faces.py WORDS --help`; its output and the top-level packages it imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "sort_faces.py"),
                        *words, "--help"], capture_output=True, text=True, timeout=120)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    return r, imported


@pytest.mark.unit
def test_top_level_help_imports_no_command_and_no_heavy_package():
    r, imported = _help()
    assert r.returncode == 0
    assert not imported & set(HEAVY), imported & set(HEAVY)
    # nor any command module: the command list comes from cli.COMMANDS
    modules = {line.split("|")[-1].strip() for line in r.stderr.splitlines()}
    assert not [m for m in modules if m.startswith("facesets.commands.")]
    for name, (text, group) in COMMANDS.items():
        assert f"    {name}" in r.stdout and text in r.stdout.replace("\n", " ")
        assert group in r.stdout


def test_every_command_help_imports_no_opencv_onnxruntime_or_torch():
    for name in COMMANDS:
        r, imported = _help(name)
        assert r.returncode == 0, (name, r.stderr[-2000:])
        assert f"usage: sort_faces.py {name}" in r.stdout
        assert not imported & {"cv2", "onnxruntime", "torch", "insightface"}, (name, imported)
        assert name not in LIGHT or "numpy" not in imported, name


@pytest.mark.unit
def test_the_table_is_the_one_source_of_each_commands_help_line():
    sub = build_parser()._subparsers._group_actions[0]
    assert list(sub.choices) == list(COMMANDS)
    assert sub._choices_actions == [], "a command module gave its parser a help line"


@pytest.mark.unit
def test_a_command_without_its_arguments_and_an_unknown_command_exit_2():
    r = subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), "rename"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage: sort_faces.py rename" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), "renam"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'renam'" in r.stderr
