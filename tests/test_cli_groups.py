"""Issue 24's command line: commands in groups (`faceset VERB`, `library VERB`, the queue
kinds' verbs) with today's names as hidden aliases, and one meaning per flag name with the old
spellings as hidden aliases that warn. The CLI is run as the user runs it (sort_faces.py in a
subprocess); the chain scripts in work/ and the README's examples are parsed against the
parser (cli.parse_args, what main runs)."""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import PACK, ROOT, TEST_THRESHOLD, all_parsers, run_cli
from facesets.cli import COMMANDS, build_parser, canonical_argv, entry, old_names, parse_args
from facesets.commands.options import FLAGS, SAME_MEANING

# every renamed flag: (old argv, new argv, dest, value); both parse to the same namespace
OLD_FLAGS = [
    (["consolidate", "L", "--merge-threshold", "0.3"],
     ["library", "consolidate", "L", "--confident-threshold", "0.3"], "confident_threshold", 0.3),
    (["review", "L", "--merge-threshold", "0.3"],
     ["library", "review", "L", "--confident-threshold", "0.3"], "confident_threshold", 0.3),
    (["discover", "C", "S", "--into", "L", "--near-threshold", "0.4"],
     ["library", "discover", "L", "C", "S", "--centroid-near", "0.4"], "centroid_near", 0.4),
    (["dedup-optimize", "L", "--near-threshold", "0.1"],
     ["library", "dedup", "L", "--max-distance", "0.1"], "max_distance", 0.1),
    (["split", "L", "F", "--threshold", "0.3"],
     ["faceset", "split", "L", "F", "--split-threshold", "0.3"], "split_threshold", 0.3),
    (["split", "L", "F", "--min-faces", "2"],
     ["faceset", "split", "L", "F", "--min-part", "2"], "min_part", 2),
    (["import-folders", "C", "R", "--into", "L", "--min-faces", "2"],
     ["library", "import", "L", "C", "R", "--min-kept", "2"], "min_kept", 2),
    (["eras", "C", "F", "--into", "L", "--split-threshold", "0.3"],
     ["faceset", "eras", "build", "L", "C", "F", "--subcluster-threshold", "0.3"],
     "subcluster_threshold", 0.3),
    (["move-face", "L", "F", "faces/001.png", "--into", "faceset_002"],
     ["faceset", "move", "L", "F", "faces/001.png", "--to", "faceset_002"], "to",
     "faceset_002"),
    (["eras", "extend", "C", "F", "--into=L"], ["faceset", "eras", "extend", "L", "C", "F"],
     "swap_ready", "L"),
]




def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sort_faces.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


# ---- the groups and the hidden names ---------------------------------------------------------

@pytest.mark.unit
def test_help_lists_the_groups_and_no_old_name():
    r = cli("--help")
    assert r.returncode == 0
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("    ")
              and not line.startswith("     ")}
    assert listed == set(COMMANDS), listed ^ set(COMMANDS)
    for group in ("faceset VERB", "library VERB", "queue kinds", "the pipeline"):
        assert f"\n  {group}" in r.stdout, group
    for verb in entry("faceset").verbs:
        assert f"    faceset {verb} " in r.stdout
    for verb in entry("library").verbs:
        assert f"    library {verb} " in r.stdout
    assert "video scenes|stage|merge|apply" in r.stdout
    for old in ("drop-faces", "move-face", "import-folders", "dedup-optimize", "track", "cut"):
        assert not re.search(rf"^\s+{old}\b", r.stdout, re.M), old
    assert "still work" in r.stdout   # one line says the old names still work


def _plain(args: argparse.Namespace) -> dict:
    """A namespace to compare: its function by name (after_run makes a closure per parse)."""
    return {k: (v.__module__, v.__qualname__) if k == "func" else v
            for k, v in vars(args).items()}


@pytest.mark.unit
def test_one_table_names_every_alias_and_each_old_name_is_its_new_command():
    aliases = old_names()
    assert aliases == {
        "rename": ["faceset", "rename"], "drop-faces": ["faceset", "drop"],
        "move-face": ["faceset", "move"], "quarantine": ["faceset", "quarantine"],
        "split": ["faceset", "split"], "eras": ["faceset", "eras"],
        "import-folders": ["library", "import"], "discover": ["library", "discover"],
        "consolidate": ["library", "consolidate"], "dedup-optimize": ["library", "dedup"],
        "history": ["library", "history"], "undo": ["library", "undo"],
        "review": ["library", "review"], "report": ["library", "report"]}
    assert not set(aliases) & set(COMMANDS), "an alias hides a command"
    assert canonical_argv(["video", "track", "S"]) == ["video", "merge", "S"]
    assert canonical_argv(["video", "cut", "S", "O"]) == ["video", "apply", "S", "O"]
    assert canonical_argv(["eras", "C", "F"]) == ["faceset", "eras", "build", "C", "F"]
    assert canonical_argv(["--version"]) == ["--version"]
    # an option value equal to an old name is not a command word
    assert canonical_argv(["library", "history", "L", "--keep", "2"])[:2] == ["library",
                                                                            "history"]
    for old, new, dest, value in OLD_FLAGS:
        a, b = parse_args(old), parse_args(new)
        assert getattr(a, dest) == getattr(b, dest) == value, (old, dest)
        assert _plain(a) == _plain(b), (old, new)


@pytest.mark.unit
def test_queue_kinds_list_the_verbs_their_modules_register():
    p = build_parser()
    top = p._subparsers._group_actions[0].choices
    for name in COMMANDS:
        command = entry(name)
        if command.words:
            verbs = top[name]._subparsers._group_actions[0].choices
            assert tuple(verbs) == command.words, name
            for verb in verbs:
                assert verbs[verb].prog.endswith(f" {name} {verb}")
    eras = top["faceset"]._subparsers._group_actions[0].choices["eras"]
    assert tuple(eras._subparsers._group_actions[0].choices) == \
        entry("faceset").verbs["eras"].words


def test_every_old_name_runs_with_the_new_commands_help_and_exit_codes():
    pairs = [([old], new) for old, new in old_names().items()] + [
        (["video", "track"], ["video", "merge"]), (["video", "cut"], ["video", "apply"]),
        (["eras", "extend"], ["faceset", "eras", "extend"])]
    for old, new in pairs:
        r_old, r_new = cli(*old, "--help"), cli(*new, "--help")
        assert r_old.returncode == r_new.returncode == 0, (old, r_old.stderr)
        assert r_old.stdout == r_new.stdout, old
        assert f"usage: sort_faces.py {' '.join(new)}" in r_new.stdout, new
        # without its arguments: the same usage error, exit 2
        r_old, r_new = cli(*old), cli(*new)
        assert r_old.returncode == r_new.returncode == 2, (old, r_old.stderr)
        assert r_old.stderr == r_new.stderr, old
    r = cli("faceset", "drop-faces")
    assert r.returncode == 2 and "invalid choice: 'drop-faces'" in r.stderr


# ---- one meaning per flag name ---------------------------------------------------------------

@pytest.mark.unit
def test_one_meaning_per_flag_name():
    uses = defaultdict(list)   # flag -> [(command, dest, help)]
    for name, p in all_parsers(build_parser()):
        for a in p._actions:
            if not a.option_strings or a.help == argparse.SUPPRESS or isinstance(
                    a, (argparse._HelpAction, argparse._VersionAction)):
                continue
            for flag in a.option_strings:
                uses[flag].append((name, a.dest, a.help or ""))
    for flag, where in uses.items():
        assert len({dest for _, dest, _ in where}) == 1, (flag, where)
        if flag in FLAGS:   # registered: its dest and its meaning everywhere
            for name, dest, text in where:
                assert dest == FLAGS[flag].dest, (flag, name)
                assert text.startswith(FLAGS[flag].meaning), (flag, name, text)
        elif len({text for _, _, text in where}) > 1:
            assert flag in SAME_MEANING, f"{flag}: worded differently by " \
                f"{[n for n, _, _ in where]}: register its one meaning in commands/options.py"
    # the clashes of issue 24, each meaning under its own name now
    takers = {flag: sorted(n for n, _, _ in where) for flag, where in uses.items()}
    assert takers["--merge-threshold"] == ["library discover", "library grow", "refine", "run"]
    assert takers["--confident-threshold"] == ["library consolidate", "library review"]
    assert takers["--max-distance"] == ["dedup", "library dedup"]
    assert takers["--centroid-near"] == ["library discover", "library grow"]
    assert "--near-threshold" not in takers and "--into" not in takers
    assert takers["--split-threshold"] == ["faceset split", "library review"]
    assert takers["--min-faces"] == ["library discover", "library grow", "refine", "run"]
    assert takers["--min-part"] == ["faceset split"]
    assert takers["--min-kept"] == ["library import"]
    assert takers["--to"] == ["faceset move"]
    # the library folder: the first positional of every command that changes a library
    for name, p in all_parsers(build_parser()):
        if name.split()[:1] in (["faceset"], ["library"]) and p._subparsers is None:
            first = next(a for a in p._actions if not a.option_strings)
            assert first.dest in ("swap_ready", "out"), name


@pytest.mark.unit
def test_old_flag_spellings_work_and_warn_once(capsys):
    for old, new, dest, value in OLD_FLAGS:
        capsys.readouterr()
        parse_args(new)
        assert capsys.readouterr().err == "", new
        parse_args(old)
        lines = capsys.readouterr().err.splitlines()
        renamed = [w for w in old if w.startswith("--") and w.split("=")[0] not in new]
        assert len(lines) == len(renamed), (old, lines)
        assert all(line.startswith("warning: ") and "deprecated" in line for line in lines)


# ---- the chain scripts and the README ---------------------------------------------------------

def _script_commands(text: str) -> list[str]:
    """The sort_faces.py command lines of a shell script: its code (continuation lines
    joined, shell words replaced by sample values) and its comments' examples."""
    text = text.replace("\\\n", " ")
    lines = []
    for line in text.splitlines():
        if "sort_faces.py" not in line:
            continue
        if line.lstrip().startswith("#"):   # "#   step   sort_faces.py CMD ...  (note)"
            m = re.match(r"#\s+[\w-]+\s+sort_faces\.py (.+?)(\s{2,}\(.*)?$", line.strip())
            if m and "..." not in m.group(1):   # $OPTS: options the caller gives
                lines.append(re.sub(r"\s\$\w+", "", m.group(1)))
            continue
        line = re.sub(r'\$\{\w+\[@\]\+"\$\{\w+\[@\]\}"\}|"\$\{\w+\[@\]\}"|\$\{\w+:-\}', "",
                      line)
        line = line.replace('"$@"', "LABEL")
        line = re.sub(r'"?\$(\w+)', lambda m: m.group(1).lower(), line)
        lines.append(line.split("sort_faces.py", 1)[1].replace('"', ""))
    return lines


def lines_of(scripts: list[Path]) -> list[str]:
    return [line for script in scripts for line in _script_commands(script.read_text())]


@pytest.mark.unit
def test_chain_scripts_parse_and_call_commands_that_exist(capsys):
    scripts = sorted((ROOT / "work").glob("*.sh"))
    assert scripts
    seen = set()
    for script in scripts:
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)
        for line in _script_commands(script.read_text()):
            argv = shlex.split(line)
            try:
                args = parse_args(argv)
            except SystemExit as exc:
                raise AssertionError(f"{script.name}: `{line}` does not parse") from exc
            assert callable(args.func), line
            seen.add(argv[0])
    # the scripts' steps (the video chain in the new verbs; old names are tested above)
    assert {"embed", "cluster", "refine", "video", "immich", "library", "extend",
            "export-swap"} <= seen, seen
    called = {tuple(shlex.split(line)[:2]) for line in lines_of(scripts)}
    assert {("video", "merge"), ("video", "apply")} <= called, called


def _readme_commands() -> list[str]:
    """Every `./face-sets ...` / `python sort_faces.py ...` line of the README's code blocks."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            m = re.match(r"(?:\./face-sets|face-sets|python3? sort_faces\.py) (.+)", line)
            if m and "[" not in m.group(1):
                lines.append(m.group(1))
    return lines


@pytest.mark.unit
def test_readme_examples_parse_in_the_new_spelling(capsys):
    lines = _readme_commands()
    assert len(lines) > 15
    for line in lines:
        argv = shlex.split(line)
        assert canonical_argv(argv) == argv, f"README uses an old name: {line}"
        parse_args(argv)
        assert "deprecated" not in capsys.readouterr().err, line
    text = (ROOT / "README.md").read_text()
    assert "still work" in text and "faceset drop" in text and "library import" in text


# ---- old names and flags on a real library -----------------------------------------------------

@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A swap-ready library of 3 people (4 facesets), with the cache and photo folders it was
    made from (test_identity_ops.build_split). Read-only: copy it before changing it."""
    from test_identity_ops import build_split

    return build_split(tmp_path_factory.mktemp("cli_groups"))


def _copy(library: Path, dest: Path) -> Path:
    shutil.copytree(library, dest, symlinks=True)
    return dest


def _facesets(lib: Path) -> dict:
    top = json.loads((lib / "manifest.json").read_text())
    return {f["name"]: f.get("face_count") for f in top["facesets"]}


def test_old_and_new_names_run_the_same_real_commands(library, tmp_path):
    old, new = _copy(library, tmp_path / "old"), _copy(library, tmp_path / "new")
    for lib, words in ((old, ["rename"]), (new, ["faceset", "rename"])):
        r = run_cli(*words, lib, "faceset_001", "Ada Lovelace")
        assert "is now 'Ada Lovelace'" in r.stdout and r.stderr == ""
        assert (lib / "faceset_001" / "NAME.txt").read_text().startswith("Ada Lovelace")
    png = json.loads((library / "faceset_001" / "manifest.json").read_text())["faces"][0]["file"]
    for lib, words in ((old, ["drop-faces"]), (new, ["faceset", "drop"])):
        r = run_cli(*words, lib, "faceset_001", png)
        assert "moved to faces/_dropped/" in r.stdout and r.stderr == ""
        assert not (lib / "faceset_001" / png).exists()
        assert (lib / "faceset_001" / "faces" / "_dropped" / Path(png).name).exists()
    assert _facesets(old) == _facesets(new)
    # a bad faceset: the same one error line and exit code under both names
    a = run_cli("rename", old, "faceset_999", "x", check=False)
    b = run_cli("faceset", "rename", new, "faceset_999", "x", check=False)
    assert a.returncode == b.returncode == 2
    assert a.stderr.replace(str(old), "L") == b.stderr.replace(str(new), "L")
    assert a.stderr.startswith("error: ") and len(a.stderr.splitlines()) == 1


def test_import_folders_and_its_old_flags_make_what_library_import_makes(library, tmp_path):
    root = library.parent
    gates = ["--loose-threshold", "0.75", "--tight-threshold", TEST_THRESHOLD,
             "--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20",
             "--no-progress", *PACK]
    old = run_cli("import-folders", root / "c.npz", root / "photos", "--into",
                  tmp_path / "old", "--min-faces", "3", *gates)
    new = run_cli("library", "import", tmp_path / "new", root / "c.npz", root / "photos",
                  "--min-kept", "3", *gates)
    assert new.stderr == ""
    assert old.stderr.count("warning: ") == 2 and "--into SWAP_READY is deprecated" in \
        old.stderr and "--min-faces is deprecated here: use --min-kept" in old.stderr
    made = _facesets(tmp_path / "new")
    assert len(made) == 3 and _facesets(tmp_path / "old") == made
    for name in made:
        assert (tmp_path / "old" / name / "NAME.txt").read_text() == \
            (tmp_path / "new" / name / "NAME.txt").read_text()


def test_old_flag_spellings_run_a_real_split_and_consolidate(library, tmp_path):
    lib = _copy(library, tmp_path / "lib")
    old = run_cli("split", lib, "faceset_000", "--threshold", TEST_THRESHOLD, "--min-faces",
                  "2", "--dry-run")
    new = run_cli("faceset", "split", lib, "faceset_000", "--split-threshold", TEST_THRESHOLD,
                  "--min-part", "2", "--dry-run")
    assert old.stdout == new.stdout and f"distance {TEST_THRESHOLD}" in new.stdout
    assert new.stderr == "" and len(old.stderr.splitlines()) == 2
    old = run_cli("consolidate", lib, "--group-threshold", TEST_THRESHOLD, "--merge-threshold",
                  "0.5", "--dry-run")
    new = run_cli("library", "consolidate", lib, "--group-threshold", TEST_THRESHOLD,
                  "--confident-threshold", "0.5", "--dry-run")
    assert old.stdout == new.stdout and "merge within 0.5" in new.stdout
    assert old.stderr.startswith("warning: --merge-threshold is deprecated here: use "
                                 "--confident-threshold")
    # a looser confident merge than grouping: one error line naming the new flag
    bad = run_cli("library", "consolidate", lib, "--group-threshold", "0.3",
                  "--confident-threshold", "0.5", check=False)
    assert bad.returncode == 2 and "--confident-threshold 0.5 is looser" in bad.stderr
