"""The file-system layer against a hostile disk (issue 21 items 3 and 7, issue 22 item 8):

- a symlink planted where face-sets keeps an internal folder (``_thumbs``, ``.runs``,
  ``faces/_dropped``, ``_split``, ``_added``, ``previews``) is refused with one ``error:``
  line naming it, and nothing is written through it;
- a full disk, by fault injection (FACESETS_FAIL_AT_WRITE, docs/design.md) in the main
  commands and for real on a small tmpfs: one line ``error: <path>: no space left on
  device``, a non-zero exit, no temp file or staging folder left, and a re-run with space
  equals a clean run;
- no NaN or Infinity in any JSON face-sets writes;
- every file and folder face-sets writes gets the umask's mode.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAVE_SHARED, ROOT, TEST_THRESHOLD, run_cli

from facesets.runtime.jobs import EXIT_ERROR  # noqa: E402

DISK_FULL_LINE = re.compile(r"error: (.+): no space left on device")


def _fsutil_run(code: str, *args, umask: int | None = None,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports facesets (fault-injection variables
    are read at import)."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})),
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line a refused command prints: non-zero exit, no traceback."""
    assert proc.returncode == EXIT_ERROR, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ---- JSON: never NaN or Infinity --------------------------------------------------------
# json.dumps calls whose text is never written to a file (a digest, an error message, a
# terminal line, an HTTP reply): per file, how many there are. Every other json.dump(s)
# must pass allow_nan=False (or go through fsutil.json_bytes / atomic_write_json).
NOT_WRITTEN = {
    "facesets/scorers/clip.py": 1,          # prompts digest
    "facesets/runtime/pipeline.py": 1,      # inputs digest
    "facesets/formats/report.py": 1,        # sheet name digest
    "facesets/formats/runs.py": 2,          # run id digest, record digest
    "facesets/formats/cache.py": 6,         # error messages quoting a bad value
    "facesets/steps/split.py": 1,           # split tag digest
    "facesets/steps/video.py": 1,           # clip uuid digest
    "facesets/steps/eras.py": 1,            # extend tag digest
    "facesets/core/newsets.py": 1,          # new-sets tag digest
    "facesets/commands/history.py": 1,      # a terminal line
    "facesets/review/server.py": 3,         # HTTP replies to the review page
}


def _json_dumps_without_allow_nan(path: Path) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("dump", "dumps") \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "json":
            if not any(k.arg == "allow_nan" and isinstance(k.value, ast.Constant)
                       and k.value.value is False for k in node.keywords):
                n += 1
    return n


@pytest.mark.unit
def test_every_json_dump_that_writes_a_file_refuses_nan():
    found = {}
    for path in sorted([*(ROOT / "facesets").rglob("*.py"), *(ROOT / "work").rglob("*.py"),
                        ROOT / "sort_faces.py"]):
        n = _json_dumps_without_allow_nan(path)
        if n:
            found[path.relative_to(ROOT).as_posix()] = n
    unexpected = {p: n for p, n in found.items() if n > NOT_WRITTEN.get(p, 0)}
    assert not unexpected, (
        f"json.dump(s) without allow_nan=False: {unexpected}; write files through "
        "fsutil.atomic_write_json / json_bytes, or pass allow_nan=False")


@pytest.mark.unit
def test_a_nan_is_refused_and_nothing_is_written(tmp_path):
    from facesets.io.fsutil import atomic_write_json

    dest = tmp_path / "m.json"
    for bad in (float("nan"), float("inf"), {"a": [1.0, float("-inf")]}):
        with pytest.raises(ValueError):
            atomic_write_json(dest, {"x": bad})
    assert _files(tmp_path) == []
    atomic_write_json(dest, {"x": 1.5, "p": "caf\udce9"})
    assert json.loads(dest.read_text()) == {"x": 1.5, "p": "caf\udce9"}


# ---- umask: files and folders get the modes plain open()/mkdir() would ------------------
_UMASK_WRITES = """
import sys
from pathlib import Path
from facesets.io import fsutil
out = Path(sys.argv[1])
fsutil.atomic_write_json(out / "lib" / "manifest.json", {"a": 1})
fsutil.atomic_write_bytes(out / "lib" / "x.fsz", b"zip")
fsutil.internal_dir(out / "lib", "_thumbs/sub")
stage = fsutil.make_staging(out / "built")
(stage / "faces").mkdir()
fsutil.atomic_write_bytes(stage / "faces" / "000.png", b"png")
fsutil.replace_dir(stage, out / "built")
fsutil.write_new_file(out / "lib" / ".runs" / "r" / "before" / "m.json", b"{}")
"""


@pytest.mark.unit
@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755),
                                                      (0o002, 0o664, 0o775),
                                                      (0o077, 0o600, 0o700)])
def test_files_and_folders_get_the_umask_mode(tmp_path, umask, file_mode, dir_mode):
    proc = _fsutil_run(_UMASK_WRITES, tmp_path, umask=umask)
    assert proc.returncode == 0, proc.stderr
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in tmp_path.rglob("*")}
    assert modes == {
        "lib": dir_mode, "lib/manifest.json": file_mode, "lib/x.fsz": file_mode,
        "lib/_thumbs": dir_mode, "lib/_thumbs/sub": dir_mode,
        "built": dir_mode, "built/faces": dir_mode, "built/faces/000.png": file_mode,
        "lib/.runs": dir_mode, "lib/.runs/r": dir_mode, "lib/.runs/r/before": dir_mode,
        "lib/.runs/r/before/m.json": file_mode}


# ---- symlinks inside an output ----------------------------------------------------------
@pytest.mark.unit
def test_internal_dir_refuses_a_symlink_below_the_root_but_follows_the_root(tmp_path):
    from facesets.io.fsutil import UnsafePathError, atomic_write_bytes, internal_dir, \
        reversible_move

    outside = tmp_path / "outside"
    outside.mkdir()
    real = tmp_path / "real_out"
    real.mkdir()
    root = tmp_path / "out"
    root.symlink_to(real)                       # the folder the user chose: followed
    assert internal_dir(root, "_thumbs") == root / "_thumbs"
    assert (real / "_thumbs").is_dir()
    (real / "faceset_000").mkdir()
    (real / "faceset_000" / "faces").symlink_to(outside)
    for rel in ("faceset_000/faces", "faceset_000/faces/_dropped"):
        with pytest.raises(UnsafePathError, match=re.escape(f"{root}/faceset_000/faces: is a "
                                                            "symlink")):
            internal_dir(root, rel)
    with pytest.raises(UnsafePathError):
        atomic_write_bytes(root / "faceset_000" / "faces" / "000.png", b"x", root=root)
    (real / "_dropped").symlink_to(outside)
    src = real / "a.png"
    src.write_bytes(b"a")
    with pytest.raises(UnsafePathError):
        reversible_move(src, root / "_dropped")
    assert src.is_file() and _files(outside) == []


def _symlinked(lib: Path, rel: str, outside: Path) -> None:
    """Replace ``lib/rel`` by a symlink to ``outside`` (its content moved there)."""
    target = lib / rel
    outside.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        for p in target.iterdir():
            shutil.move(p, outside / p.name)
        target.rmdir()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(outside, target_is_directory=True)


if HAVE_SHARED:
    from test_identity_ops import split_dir  # noqa: F401  (the module's library fixture)


def _best(lib: Path, faceset: str) -> str:
    m = json.loads((lib / faceset / "manifest.json").read_text())
    return sorted(m["faces"], key=lambda f: f["rank"])[0]["file"]


_ORIGINAL = Path()
SYMLINK_CASES = {
    # folder made a symlink: the command that writes into it
    "_thumbs": lambda lib: ["report", lib],
    ".runs": lambda lib: ["rename", lib, "faceset_001", "Somebody"],
    "faceset_000/faces/_dropped": lambda lib: ["drop-faces", lib, "faceset_000",
                                               _best(lib, "faceset_000")],
    "faceset_000/faces": lambda lib: ["drop-faces", lib, "faceset_000",
                                      _best(lib, "faceset_000")],
    "faceset_001/previews": lambda lib: ["drop-faces", lib, "faceset_001",
                                         _best(lib, "faceset_001")],
    "_split": lambda lib: ["split", lib, "faceset_000", "--threshold", "0.2",
                           "--min-faces", "1"],
    # the cache names the photos of the library the copy was made from
    "_added": lambda lib: ["import-folders", lib.parent / "c.npz", _ORIGINAL / "photos",
                           "--into", lib, "--loose-threshold", "0.75", "--tight-threshold",
                           TEST_THRESHOLD, "--swap-outlier-threshold", TEST_THRESHOLD,
                           "--min-face-short", "20", "--no-progress"],
}


@pytest.mark.parametrize("rel", list(SYMLINK_CASES))
def test_a_symlinked_internal_folder_is_refused_and_nothing_is_written_outside(
        split_dir, tmp_path, rel):
    global _ORIGINAL
    _ORIGINAL = split_dir.parent
    w = tmp_path / "w"
    shutil.copytree(split_dir.parent, w, symlinks=True)
    lib = w / "swap"
    outside = tmp_path / "outside"
    _symlinked(lib, rel, outside)
    before_outside = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    before_lib = {p: p.read_bytes() for p in lib.rglob("*") if p.is_file()}
    proc = run_cli(*SYMLINK_CASES[rel](lib), check=False)
    line = _one_error_line(proc)
    assert line.startswith(f"error: {lib / rel}: is a symlink;"), line
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before_outside
    assert {p: p.read_bytes() for p in lib.rglob("*") if p.is_file()} == before_lib, \
        "the library changed though the command was refused"


# ---- a full disk ------------------------------------------------------------------------
@pytest.mark.unit
def test_the_nth_write_and_every_later_one_fail_as_a_full_disk(tmp_path):
    """FACESETS_FAIL_AT_WRITE=N: writes 1..N-1 land, the N-th and later raise ENOSPC naming
    their file, no temp file is left."""
    code = ("import sys\nfrom facesets.io.fsutil import atomic_write_bytes as w\n"
            "for i in range(4):\n"
            "    try: w(sys.argv[1] + f'/f{i}', b'x')\n"
            "    except OSError as e: print(e.errno, e.filename)\n")
    proc = _fsutil_run(code, tmp_path, env={"FACESETS_FAIL_AT_WRITE": "2"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"28 {tmp_path}/f{i}" for i in (1, 2, 3)]
    assert _files(tmp_path) == ["f0"]


def _leftovers(w: Path) -> list[str]:
    """Temp files, staging and half-built folders, locks under ``w``."""
    from killharness import is_leftover

    from facesets.io.fsutil import OWNED_PREFIX
    return sorted(rel for rel in _files(w) if is_leftover(rel) or OWNED_PREFIX in rel)


def _check_disk_full_run(run, w: Path) -> str:
    """A run that hit a full disk: one line naming a file inside ``w``, nothing half-done
    left; returns the file named."""
    assert run.rc == EXIT_ERROR, (run.rc, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and DISK_FULL_LINE.fullmatch(errors[0]), run.stderr[-2000:]
    named = Path(DISK_FULL_LINE.fullmatch(errors[0]).group(1))
    assert (w / named).resolve().is_relative_to(w.resolve()), named
    assert not _leftovers(w), _leftovers(w)
    return str(named)


def _fail_at_write_then_rerun(h, k: int) -> None:
    """Reset W, run with the k-th write failing, then with space again: the re-run must
    equal the uninterrupted run."""
    from killharness import compare, state

    h.reset()
    env = h.scenario.env
    h.scenario.env = dict(env, FACESETS_FAIL_AT_WRITE=str(k))
    try:
        first = h.run(tag=f"full{k}")
    finally:
        h.scenario.env = env
    _check_disk_full_run(first, h.w)
    again = h.run(tag=f"again{k}")
    assert again.rc == 0, again.stderr[-2000:]
    diffs = compare(h.reference, state(h.w, h.scenario))
    assert not diffs, f"k={k}: " + "\n".join(diffs[:12])


def _disk_full_scenarios() -> dict:
    if not HAVE_SHARED:
        return {}
    from killharness import REFINE_ARGS, SCENARIOS, Scenario, build_enrich
    from test_identity_ops import CONSOLIDATE, _best_face

    from_library = {
        "report": lambda lib: ["report", "swap"],
        "drop-faces": lambda lib: ["drop-faces", "swap", "faceset_000",
                                   _best_face(lib, "faceset_000")],
        "consolidate": lambda lib: ["consolidate", "swap", *CONSOLIDATE],
    }
    out = dict(SCENARIOS)
    out["cluster"] = Scenario("cluster", build_enrich, lambda w: [
        "cluster", "c.npz", "raw", "--threshold", TEST_THRESHOLD], caches=("c.npz",))
    out["refine"] = Scenario("refine", build_enrich, lambda w: [
        "refine", "c.npz", "sets", *REFINE_ARGS], caches=("c.npz",))
    for name, argv in from_library.items():
        out[name] = (name, argv)   # built from the split_dir fixture in the test
    return out


DISK_FULL = _disk_full_scenarios()


@pytest.mark.parametrize("name", sorted(DISK_FULL) or ["(needs ../shared)"])
def test_a_full_disk_is_one_line_and_a_rerun_equals_a_clean_run(request, tmp_path, name):
    from killharness import KillHarness, Scenario

    scenario = DISK_FULL.get(name)
    if scenario is None:
        pytest.skip("needs ../shared")
    if isinstance(scenario, tuple):
        library = request.getfixturevalue("split_dir")
        argv = scenario[1](library)

        def build(w: Path) -> None:
            shutil.copytree(library, w / "swap")
            if name == "report":   # a page and sheets to write
                shutil.rmtree(w / "swap" / "_thumbs")
                (w / "swap" / "index.html").unlink()
        scenario = Scenario(name, build, lambda w: argv)
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    n = h.run_reference()
    for k in sorted({1, (n + 1) // 2}):   # the first write, one half way
        _fail_at_write_then_rerun(h, k)


# sizes that let each command start and fill the disk on the way (beyond its inputs)
TMPFS_ROOM = {"export-swap": "1m", "embed": "12k"}


def _mount(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _used(folder: Path) -> int:
    st = os.statvfs(folder)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize("name", sorted(TMPFS_ROOM))
def test_a_real_full_tmpfs_is_one_line_and_a_rerun_with_space_equals_a_clean_run(
        tmp_path, name):
    from conftest import needs_shared
    needs_shared()
    from killharness import SCENARIOS, KillHarness, compare, state

    h = KillHarness(SCENARIOS[name], tmp_path)
    h.prepare()
    h.run_reference()
    shutil.rmtree(h.w)
    h.w.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", "size=256m", "tmpfs", str(h.w))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        shutil.copytree(h.template, h.w, symlinks=True, dirs_exist_ok=True)
        room = TMPFS_ROOM[name]
        small = _used(h.w) + int(room[:-1]) * {"k": 1024, "m": 1024 ** 2}[room[-1]]
        assert _mount("-o", f"remount,size={small}", str(h.w)).returncode == 0
        full = h.run(tag="tmpfs-full")
        _check_disk_full_run(full, h.w)
        assert _mount("-o", "remount,size=256m", str(h.w)).returncode == 0
        again = h.run(tag="tmpfs-again")
        assert again.rc == 0, again.stderr[-2000:]
        diffs = compare(h.reference, state(h.w, h.scenario))
        assert not diffs, "\n".join(diffs[:12])
    finally:
        subprocess.run(["umount", str(h.w)], capture_output=True)


def test_immich_stage_never_writes_through_a_symlinked_staging_subfolder(tmp_path):
    from conftest import needs_shared
    needs_shared()
    from test_immich import FakeImmich, library, stage

    fake = FakeImmich(library()).start()
    try:
        root = tmp_path / "alice"
        root.mkdir()
        outside = tmp_path / "outside"
        outside.mkdir()
        (root / "trip").symlink_to(outside)          # where trip/IMG_0001.jpg would go
        proc = stage(fake, root, "--skip-thumbs", check=False)
    finally:
        fake.stop()
    assert _files(outside) == []
    line = _one_error_line(proc)
    assert line.startswith(f"error: {root / 'trip'}: is a symlink;"), line


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755),
                                                      (0o002, 0o664, 0o775)])
def test_commands_write_files_and_folders_with_the_umask_mode(split_dir, tmp_path, umask,
                                                             file_mode, dir_mode):
    """rename (a recorded run: .runs/, manifests, bundles, NAME.txt) and report (the page,
    _thumbs/) as the user runs them under a umask."""
    lib = tmp_path / "swap"
    shutil.copytree(split_dir, lib)
    shutil.rmtree(lib / "_thumbs")
    for p in [lib, *lib.rglob("*")]:      # so that what the commands write stands out
        p.chmod(0o700 if p.is_dir() else 0o600)
    for args in (["rename", lib, "faceset_001", "Somebody"], ["report", lib]):
        run_cli(*args, preexec_fn=lambda: os.umask(umask))
    written = {p.relative_to(lib).as_posix(): p.stat().st_mode & 0o777
               for p in lib.rglob("*") if p.stat().st_mode & 0o077}
    assert any(rel.startswith(".runs/") for rel in written), sorted(written)
    assert {"index.html", "_thumbs", "faceset_001/NAME.txt"} <= set(written), sorted(written)
    assert {rel: m for rel, m in written.items()
            if m != (dir_mode if (lib / rel).is_dir() else file_mode)} == {}
