"""Kill a command at its file commits and check that a re-run equals an uninterrupted run.

The fault-injection hook (``fsutil.commit_point``, docs/design.md "Fault injection") counts
the commits of a process (``FACESETS_COMMIT_LOG``) and SIGKILLs it right after its N-th
(``FACESETS_KILL_AT_COMMIT``). For one ``Scenario`` (inputs + a command):

  1. build the inputs once in the work folder W and keep a copy (the template);
  2. reference: reset W from the template, run uninterrupted with a commit log -> N commits,
     and take the final state of W;
  3. per kill point k: reset W, run with FACESETS_KILL_AT_COMMIT=k (it must die by SIGKILL,
     or finish normally when it made fewer than k commits), re-run uninterrupted, and
     compare the state of W with the reference.

Every run happens in the same absolute folder W, so the absolute paths recorded in caches and
manifests (and the file names derived from them) are the same in every run. The state of W:
every file by bytes (JSON / JSON Lines without volatile fields: timestamps, run ids,
durations), symlinks by target, folders by name, and each cache by content (tables sorted by
key, meta without timestamps) plus its layout (base file, number of segments). A leftover
temp file, staging folder or lock shows up as a file the reference does not have.

Used by tests/test_kill_commits.py (a sample of kill points) and bench/kill_campaign.py
(every kill point).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from facesets.formats.cache import list_segments, load_cache, segments_dir  # noqa: E402

# JSON fields that differ between two equal runs (when, how long, which run)
VOLATILE_KEYS = frozenset({"created", "saved", "when", "finished", "started", "seconds",
                           "timing", "run", "export_run", "queue_created"})
# names a finished run must not leave behind (temp files, staging folders, locks)
LEFTOVER_PATTERNS = [re.compile(p) for p in (r"^\..*\.tmp$", r"\.partial$", r"\.old$",
                                             r"^\..*\.staging", r"\.lock$")]
KILLED = -signal.SIGKILL


@dataclass
class Scenario:
    """A command to kill: how to build its inputs in W and how to call it.

    ``argv(W)`` gives the arguments of ``sort_faces.py``; ``caches`` names the caches in W
    (relative paths) compared by content instead of bytes; ``json_ignore`` maps a file name
    to further keys dropped from it before comparing (each with a reason in the scenario).
    """
    name: str
    build: Callable[[Path], None]
    argv: Callable[[Path], list[str]]
    caches: tuple[str, ...] = ()
    json_ignore: dict[str, frozenset] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 600


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    commits: list[str]          # what each commit of this run committed, in order

    def tail(self) -> str:
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return lines[-1] if lines else ""


@dataclass
class KillResult:
    k: int
    what: str                   # the commit the run was killed after ("" if it finished)
    outcome: str                # "equal", "differs", "failed"
    killed: bool
    diffs: list[str] = field(default_factory=list)   # why it differs / failed

    def line(self) -> str:
        head = f"k={self.k} after {self.what or '(finished before k)'}: {self.outcome}"
        return head + "".join(f"\n    {d}" for d in self.diffs[:12]) + (
            f"\n    ... {len(self.diffs) - 12} more" if len(self.diffs) > 12 else "")


# ---- the state of a work folder ---------------------------------------------------------
def _strip(obj, drop: frozenset):
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


def _file_digest(path: Path, drop: frozenset) -> str:
    data = path.read_bytes()
    if path.suffix in (".json", ".jsonl"):
        try:
            text = data.decode("utf-8")
            doc = (json.loads(text) if path.suffix == ".json"
                   else [json.loads(line) for line in text.splitlines() if line.strip()])
            return "json:" + json.dumps(_strip(doc, drop), sort_keys=True)
        except (UnicodeDecodeError, ValueError):
            pass   # compared by bytes: a broken manifest differs anyway
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _sorted_table(table: dict, keys: list[str]) -> dict:
    if not table or not len(next(iter(table.values()))):
        return {k: v for k, v in table.items()}
    order = np.lexsort([table[k].astype(str) for k in reversed(keys)])
    return {k: v[order] for k, v in table.items()}


def cache_state(path: Path) -> dict:
    """A cache as content: meta without timestamps, tables sorted by key, and its layout."""
    c = load_cache(path)
    return {"meta": _strip(c.meta, VOLATILE_KEYS),
            "paths": _sorted_table(c.paths, ["path"]),
            "files": _sorted_table(c.files, ["sha256"]),
            "faces": _sorted_table(c.faces, ["sha256", "index"]),
            "layout": {"base": path.is_file(), "segments": len(list_segments(path))}}


def _cache_files(w: Path, caches: tuple[str, ...]) -> set[Path]:
    out = set()
    for rel in caches:
        out.add(w / rel)
        out.update(list_segments(w / rel))
    return out


def state(w: Path, scenario: Scenario) -> dict:
    """Everything a run leaves in ``w`` (see the module doc)."""
    skip = _cache_files(w, scenario.caches)
    tree = {}
    for dirpath, dirnames, filenames in os.walk(w):
        d = Path(dirpath)
        for name in dirnames:
            p = d / name
            rel = p.relative_to(w).as_posix()
            tree[rel] = f"link:{os.readlink(p)}" if p.is_symlink() else "dir"
        for name in filenames:
            p = d / name
            if p in skip:
                continue
            rel = p.relative_to(w).as_posix()
            if p.is_symlink():
                tree[rel] = f"link:{os.readlink(p)}"
            else:
                drop = VOLATILE_KEYS | scenario.json_ignore.get(name, frozenset())
                tree[rel] = _file_digest(p, drop)
    caches = {}
    for rel in scenario.caches:
        try:
            caches[rel] = cache_state(w / rel)
        except Exception as exc:  # noqa: BLE001 - any failure to load is a finding
            caches[rel] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"tree": tree, "caches": caches}


def is_leftover(rel: str) -> bool:
    return any(p.search(part) for part in rel.split("/") for p in LEFTOVER_PATTERNS)


def json_diff(a, b, where: str = "", most: int = 4) -> list[str]:
    """Paths (``faces[3].file``) where two JSON documents differ, the first ``most``."""
    if type(a) is not type(b):
        return [where or "."]
    if isinstance(a, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                out.append(f"{where}.{k} ({'only in re-run' if k in b else 'missing'})")
            else:
                out += json_diff(a[k], b[k], f"{where}.{k}", most)
            if len(out) >= most:
                break
        return out[:most]
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{where} ({len(b)} items, reference {len(a)})"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += json_diff(x, y, f"{where}[{i}]", most)
            if len(out) >= most:
                break
        return out[:most]
    return [] if a == b else [where or "."]


def _table_diffs(name: str, ref: dict, got: dict) -> list[str]:
    if set(ref) != set(got):
        return [f"{name}: columns {sorted(set(ref) ^ set(got))} present in one only"]
    n_ref = len(next(iter(ref.values()))) if ref else 0
    n_got = len(next(iter(got.values()))) if got else 0
    if n_ref != n_got:
        return [f"{name}: {n_got} rows, reference {n_ref}"]
    bad = []
    for col in ref:
        a, b = ref[col], got[col]
        same = (a.shape == b.shape and
                (np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f"
                 else np.array_equal(a, b)))
        if not same:
            bad.append(col)
    return [f"{name}: columns {bad} differ"] if bad else []


def compare(ref: dict, got: dict) -> list[str]:
    """Human-readable differences between two states (empty when equal)."""
    diffs = []
    rt, gt = ref["tree"], got["tree"]
    for rel in sorted(set(gt) - set(rt)):
        diffs.append(f"extra {rel}" + (" (leftover temp/staging/lock)" if is_leftover(rel)
                                        else ""))
    for rel in sorted(set(rt) & set(gt)):
        if is_leftover(rel):
            diffs.append(f"leftover {rel} (the uninterrupted run leaves it too)")
    for rel in sorted(set(rt) - set(gt)):
        diffs.append(f"missing {rel}")
    for rel in sorted(set(rt) & set(gt)):
        if rt[rel] != gt[rel]:
            where = ""
            if rt[rel].startswith("json:") and gt[rel].startswith("json:"):
                where = " at " + ", ".join(json_diff(json.loads(rt[rel][5:]),
                                                     json.loads(gt[rel][5:])))
            diffs.append(f"differs {rel}{where}")
    for rel, rc in ref["caches"].items():
        gc = got["caches"].get(rel, {"error": "absent"})
        if "error" in gc or "error" in rc:
            if gc.get("error") != rc.get("error"):
                diffs.append(f"cache {rel}: {gc.get('error') or 'loads'} "
                             f"(reference: {rc.get('error') or 'loads'})")
            continue
        if gc["meta"] != rc["meta"]:
            keys = sorted(k for k in set(rc["meta"]) | set(gc["meta"])
                          if rc["meta"].get(k) != gc["meta"].get(k))
            diffs.append(f"cache {rel}: meta differs in {keys}")
        for table in ("paths", "files", "faces"):
            diffs += [f"cache {rel}: {d}" for d in _table_diffs(table, rc[table], gc[table])]
        if gc["layout"] != rc["layout"]:
            diffs.append(f"cache {rel}: layout {gc['layout']} (reference {rc['layout']}): "
                         "not compacted")
    return diffs


# ---- running ------------------------------------------------------------------------------
class KillHarness:
    """One scenario in ``root/<name>/``: W (``w``), its template, commit logs."""

    def __init__(self, scenario: Scenario, root: Path):
        self.scenario = scenario
        self.base = Path(root) / scenario.name
        self.w = self.base / "w"
        self.template = self.base / "template"
        self.logs = self.base / "logs"
        self.reference: dict | None = None
        self.commits: list[str] = []

    def prepare(self) -> None:
        """Build the inputs in W once and keep them as the template."""
        for p in (self.w, self.template, self.logs):
            if p.exists():
                shutil.rmtree(p)
        self.w.mkdir(parents=True)
        self.logs.mkdir()
        self.scenario.build(self.w)
        shutil.copytree(self.w, self.template, symlinks=True)

    def reset(self) -> None:
        shutil.rmtree(self.w)
        shutil.copytree(self.template, self.w, symlinks=True)

    def run(self, kill_at: int | None = None, tag: str = "run") -> Run:
        log = self.logs / f"{tag}.log"
        log.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("FACESETS_KILL_AT_COMMIT", "FACESETS_COMMIT_LOG")}
        env.update(self.scenario.env, PYTHONUNBUFFERED="1", FACESETS_COMMIT_LOG=str(log))
        if kill_at:
            env["FACESETS_KILL_AT_COMMIT"] = str(kill_at)
        proc = subprocess.run([sys.executable, str(ROOT / "sort_faces.py"),
                               *map(str, self.scenario.argv(self.w))],
                              cwd=self.w, env=env, capture_output=True, text=True,
                              timeout=self.scenario.timeout)
        commits = []
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                commits.append(line.split("\t", 1)[1] if "\t" in line else line)
        return Run(proc.returncode, proc.stdout, proc.stderr, commits)

    def short(self, what: str) -> str:
        return what.replace(str(self.w) + os.sep, "")

    def run_reference(self) -> int:
        """The uninterrupted run: its commit count N and the final state."""
        self.reset()
        r = self.run(tag="reference")
        if r.rc != 0:
            raise RuntimeError(f"{self.scenario.name}: the uninterrupted run failed "
                               f"(exit {r.rc}): {r.tail()}")
        self.commits = r.commits
        self.reference = state(self.w, self.scenario)
        return len(self.commits)

    def reference_leftovers(self) -> list[str]:
        """Temp files, staging folders or locks the uninterrupted run itself leaves."""
        return sorted(rel for rel in self.reference["tree"] if is_leftover(rel))

    def try_kill(self, k: int) -> KillResult:
        """Kill at commit k, re-run, compare with the reference."""
        assert self.reference is not None, "run_reference() first"
        self.reset()
        first = self.run(kill_at=k, tag=f"kill{k}")
        what = self.short(first.commits[k - 1]) if len(first.commits) >= k else ""
        if first.rc == KILLED:
            killed = True
        elif first.rc == 0 and len(first.commits) < k:
            killed = False
        else:
            return KillResult(k, what, "failed", False,
                              [f"the run to kill exited {first.rc} after "
                               f"{len(first.commits)} commits: {first.tail()}"])
        again = self.run(tag=f"rerun{k}")
        if again.rc != 0:
            return KillResult(k, what, "failed", killed,
                              [f"re-run exited {again.rc}: {again.tail()}"])
        diffs = compare(self.reference, state(self.w, self.scenario))
        return KillResult(k, what, "differs" if diffs else "equal", killed, diffs)


def sample_points(commits: list[str], most: int) -> list[int]:
    """A spread of kill points (1-based): the first and last commit, the first commit of each
    kind of file (segment, cache base, manifest, bundle, PNG, move...), then evenly spaced
    ones, ``most`` in all."""
    n = len(commits)
    if n == 0:
        return []
    chosen = [1, n]
    kinds: dict[str, int] = {}
    for i, what in enumerate(commits, 1):
        kinds.setdefault(commit_kind(what), i)
    chosen += sorted(kinds.values())
    chosen += [round(1 + j * (n - 1) / (most - 1)) for j in range(1, most - 1)] if most > 2 else []
    out: list[int] = []
    for k in chosen:
        if k not in out:
            out.append(k)
    return sorted(out[:most])


def commit_kind(what: str) -> str:
    """The kind of file a commit wrote, for spreading kill points across phases."""
    if " -> " in what:
        return "move"
    name = Path(what).name
    if re.match(r"seg-\d+\.npz$", name):
        return "segment"
    return Path(name).suffix or name


# ---- the scenarios of issue 8: embed, enrich, export-swap, run, extend, audit apply ---------
# (the same inputs and options as tests/test_embed, test_enrich, test_export, test_run,
# test_extend and test_audit, on fewer photos to keep each run short)
from conftest import FACES, GROUP, LOW_GATES, PACK, TEST_THRESHOLD, run_cli  # noqa: E402

PEOPLE = ([p for p in sorted(FACES.iterdir()) if len(list(p.glob("*.jpg"))) >= 10]
          if FACES.is_dir() else [])   # without ../shared: the unit tests still collect
REFINE_ARGS = ["--initial-threshold", TEST_THRESHOLD, "--merge-threshold", "0.5",
               "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES, "--min-faces", "4"]
EXPORT_ARGS = ["--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20", *PACK,
               "--no-progress"]
RUN_ARGS = [*PACK, "--threshold", TEST_THRESHOLD, *REFINE_ARGS,
            "--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20",
            "--flush-every", "4", "--no-progress"]
WORKER = ROOT / "work" / "multiface_worker.py"


def copy_photos(dest: Path, people: list[Path], first: int = 0, last: int | None = None) -> None:
    """Photos ``first:last`` (sorted) of each person into ``dest/<person>/``."""
    for person in people:
        for f in sorted(person.glob("*.jpg"))[first:last]:
            (dest / person.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / person.name / f.name)


def _embed(w: Path, src: str = "photos") -> None:
    run_cli("embed", w / src, w / "c.npz", *PACK, "--no-progress")


def build_embed(w: Path) -> None:
    """A cache of one person; two more to embed into it (flushes, then compaction)."""
    copy_photos(w / "photos", PEOPLE[:1], 0, 5)
    _embed(w)
    copy_photos(w / "photos", PEOPLE[1:3], 0, 5)


def build_enrich(w: Path) -> None:
    copy_photos(w / "photos", PEOPLE[:3], 0, 5)
    _embed(w)


def build_export(w: Path) -> None:
    """A refine output and an older export of it (--top-n 2) that the command replaces."""
    copy_photos(w / "photos", PEOPLE[:3], 0, 5)
    _embed(w)
    run_cli("refine", w / "c.npz", w / "refined", *REFINE_ARGS)
    run_cli("export-swap", w / "c.npz", w / "refined" / "refine_manifest.json", w / "swap",
            *EXPORT_ARGS, "--top-n", "2")


def build_run(w: Path) -> None:
    copy_photos(w / "photos", PEOPLE[:3], 0, 5)


def build_extend(w: Path) -> None:
    """cluster + refine of a first batch; a second batch (old and new people) embedded."""
    copy_photos(w / "batch1", PEOPLE[:3], 0, 5)
    run_cli("embed", w / "batch1", w / "c.npz", *PACK, "--no-progress")
    run_cli("cluster", w / "c.npz", w / "raw", "--threshold", TEST_THRESHOLD)
    run_cli("refine", w / "c.npz", w / "sets", *REFINE_ARGS)
    copy_photos(w / "batch2", PEOPLE[:2], 5, 7)
    copy_photos(w / "batch2", PEOPLE[3:4], 0, 5)
    run_cli("embed", w / "batch2", w / "c.npz", *PACK, "--no-progress")


def plant_two_faces(png: Path) -> None:
    """Overwrite an exported crop with a photo of two people, at the crop's size."""
    import cv2

    size = cv2.imread(str(png)).shape[:2]
    two = cv2.imread(str(GROUP / "face_recognition_two_people.jpg"))
    cv2.imwrite(str(png), cv2.resize(two, (size[1], size[0])))


def build_audit(w: Path) -> None:
    """An export of 3 people with two planted two-face PNGs per faceset, staged and checked
    by the worker: apply drops 6 PNGs in 3 facesets."""
    build_export(w)
    shutil.rmtree(w / "swap")
    run_cli("export-swap", w / "c.npz", w / "refined" / "refine_manifest.json", w / "swap",
            *EXPORT_ARGS)
    top = json.loads((w / "swap" / "manifest.json").read_text())
    for entry in top["facesets"]:
        fs = json.loads((w / "swap" / entry["manifest"]).read_text())
        for face in fs["faces"][1:3]:
            plant_two_faces(w / "swap" / entry["name"] / face["file"])
    run_cli("audit-multiface", "stage", w / "swap", w / "mq.json", *PACK)
    subprocess.run([sys.executable, str(WORKER), str(w / "mq.json"), str(w / "mres.jsonl"),
                    "--no-progress"], check=True, capture_output=True)


# run_state.json records per step a summary of what that run did (how many photos it
# embedded...): after a kill the resuming run did less, by design; and a digest of the step's
# inputs, which for export-swap hashes the manifests' bytes, timestamps included. The files
# and the cache those digests stand for are compared themselves.
RUN_STATE_SUMMARY = {"run_state.json": frozenset({"summary", "inputs"})}

SCENARIOS = {s.name: s for s in [
    Scenario("embed", build_embed,
             lambda w: ["embed", "photos", "c.npz", *PACK, "--flush-every", "3",
                        "--no-progress"], caches=("c.npz",)),
    Scenario("enrich", build_enrich,
             lambda w: ["enrich", "c.npz", *PACK, "--flush-every", "3", "--no-progress"],
             caches=("c.npz",)),
    Scenario("export-swap", build_export,
             lambda w: ["export-swap", "c.npz", "refined/refine_manifest.json", "swap",
                        *EXPORT_ARGS], caches=("c.npz",)),
    Scenario("run", build_run,
             lambda w: ["run", "photos", "out", "--cache", "c.npz", *RUN_ARGS],
             caches=("c.npz",), json_ignore=RUN_STATE_SUMMARY),
    Scenario("extend", build_extend,
             lambda w: ["extend", "c.npz", "raw", "--refine-out", "sets"], caches=("c.npz",)),
    Scenario("audit-apply", build_audit,
             lambda w: ["audit-multiface", "apply", "mq.json", "mres.jsonl"]),
]}
