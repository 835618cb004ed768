"""The command line imports only the command that runs: `--help` and `COMMAND --help` load
no numpy, OpenCV, ONNX Runtime or torch (checked with `python -X importtime`, as the user
runs sort_faces.py; timings live in bench/, not here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facesets.cli import COMMANDS, build_parser, command_module, entry, is_group

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("cv2", "numpy", "onnxruntime", "torch", "insightface", "sklearn")
# commands with neither model nor engine options (nor a step's defaults): not even numpy
LIGHT = ("library consolidate", "library dedup", "faceset rename", "faceset drop",
         "faceset move", "faceset quarantine", "library history", "library undo",
         "library report", "library review")


def leaf_commands() -> list[str]:
    """Every command as its words: "embed", "faceset rename", "video" (a queue kind)."""
    return [f"{name} {verb}" if is_group(entry(name)) else name
            for name in COMMANDS for verb in (entry(name).verbs if is_group(entry(name))
                                              else [None])]


def _modules(r: subprocess.CompletedProcess) -> set[str]:
    return {line.split("|")[-1].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:")}


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
    assert not [m for m in _modules(r) if m.startswith("facesets.commands.")]
    text = " ".join(r.stdout.split())
    for name in COMMANDS:
        assert entry(name).group in r.stdout
    for words in leaf_commands():
        assert f"    {words}" in r.stdout
        name, _, verb = words.partition(" ")
        command = entry(name).verbs[verb] if verb else entry(name)
        assert " ".join(command.help.split()) in text, words


@pytest.mark.unit
def test_a_group_help_imports_none_of_its_commands():
    r, imported = _help("faceset")
    assert r.returncode == 0 and "usage: sort_faces.py faceset" in r.stdout
    assert not [m for m in _modules(r) if m.startswith("facesets.commands.")], _modules(r)
    assert not imported & set(HEAVY)
    for verb, command in entry("faceset").verbs.items():
        assert f"  {verb}" in r.stdout and command.help.split()[0] in r.stdout


def test_every_command_help_imports_no_opencv_onnxruntime_or_torch():
    group_modules = {f"{name} {verb}": command_module(verb, command)
                     for name in COMMANDS if is_group(entry(name))
                     for verb, command in entry(name).verbs.items()}
    for words in leaf_commands():
        r, imported = _help(*words.split())
        assert r.returncode == 0, (words, r.stderr[-2000:])
        assert f"usage: sort_faces.py {words}" in r.stdout
        assert not imported & {"cv2", "onnxruntime", "torch", "insightface"}, (words, imported)
        assert words not in LIGHT or "numpy" not in imported, words
        # a group's command imports no other command of the groups
        if words in group_modules:
            others = set(group_modules.values()) - {group_modules[words]}
            assert not others & _modules(r), (words, others & _modules(r))


@pytest.mark.unit
def test_the_table_is_the_one_source_of_each_commands_help_line():
    sub = build_parser()._subparsers._group_actions[0]
    assert list(sub.choices) == list(COMMANDS)
    assert sub._choices_actions == [], "a command module gave its parser a help line"
    for name in COMMANDS:
        if is_group(entry(name)):
            verbs = sub.choices[name]._subparsers._group_actions[0]
            assert list(verbs.choices) == list(entry(name).verbs)
            assert verbs._choices_actions == [], f"a {name} command gave itself a help line"


@pytest.mark.unit
def test_a_command_without_its_arguments_and_an_unknown_command_exit_2():
    r = subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), "rename"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage: sort_faces.py faceset rename" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), "renam"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'renam'" in r.stderr
