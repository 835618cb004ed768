"""Small hand edits of a swap-ready folder: rename, drop faces, move a face, quarantine, undo.

The review page (facesets/review/) and the CLI commands (rename, drop-faces, move-face,
quarantine, undo) call these same functions. Each is one recorded run (core/runs.py):
planned with the previous bytes of every manifest and bundle it changes, carried out in
redoable steps, undoable with ``undo``; afterwards every manifest and bundle agrees with the
files on disk. Nothing is deleted:

- ``rename``: NAME.txt gets the new name (its previous text is kept for undo);
- ``drop_faces``: PNGs move to ``faces/_dropped/`` (``dropped[]`` reason ``review``);
- ``move_face``: PNGs move into another faceset's ``faces/`` (numbered past its highest),
  that faceset is re-ranked by score; both rebuild their bundles (centroids stay: a
  manifest holds no embeddings);
- ``quarantine``: the faceset folder moves to ``_quarantine/`` and leaves the listing
  (``quarantined[]`` in the top-level manifest says where it went).

Every function takes the folder's lock and first finishes a run a kill interrupted.
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core import runs
from ..core.library import Faceset, Library, display_name, noted, now
from ..formats.manifest import (FACESET_NAME, SWAP_FACESET_MANIFEST, ManifestError,
                                load_manifest, safe_member_path)
from ..formats.runs import AFTER_DIR, BEFORE_DIR, PRUNED_FILE, RUNS_SECTION
from ..formats.swapset import (ADDED_DIR, FACES_DIR, MANIFEST_NAME, NAME_FILE, REVIEW_REASON,
                               SPLIT_DIR, drop_destination, faceset_listing, next_face_number)
from ..io.fsutil import atomic_write_json

QUARANTINE_DIR = "_quarantine"
QUARANTINED_SECTION = "quarantined"
NAME_MAX = 200

Log = Callable[[str], None]


def _faceset(root: Path, name: str) -> tuple[Path, dict]:
    """A listed faceset's folder and manifest; a name not listed is refused."""
    faceset = Library(root).faceset(name)
    return faceset.folder, faceset.body


def _commit(root: Path, step: str, moves, after: dict, changed: list[str], rebuild: list[str],
            summary: dict, log: Log, listing: dict[str, dict] | None = None,
            remove: set[str] = frozenset(), section: tuple[str, dict] | None = None) -> dict:
    """The run (core/runs.commit): the top-level manifest's listings refreshed, ``remove``
    dropped, a ``section`` record added."""
    def add_record(top: dict) -> None:
        top.setdefault(section[0], []).append(section[1])

    return runs.commit(root, step, after, changed, summary, log, moves=moves, rebuild=rebuild,
                       listing=listing, remove=remove, update=add_record if section else None)


def _locked(fn):
    def wrapper(root, *a, log: Log = print, **kw):
        with Library(root, log, indent="").open() as lib:
            return fn(lib.root, *a, log=log, **kw)
    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


def _done_already(root: Path, step: str, request: dict, log: Log) -> dict | None:
    """The newest run of the folder when it is this very request and still in effect (a
    re-run after a kill, finished by ``finish_pending`` or complete already; the same click
    twice on the review page): its ``runs[]`` entry, so the repeat changes nothing and
    does not fail on a face or faceset the first one moved away."""
    entries = runs.load_top(root).get(RUNS_SECTION, [])
    last = entries[-1] if entries else None
    if last and last["step"] == step and not last.get("undone_by") \
            and isinstance(last.get("summary"), dict) \
            and last["summary"].get("request") == request:
        log(f"run {last['id']} did this {step} already; nothing changed")
        return last
    return None


def clean_name(text: str) -> str:
    """A person's name as NAME.txt holds it: one line, no control characters."""
    if not isinstance(text, str):
        raise ValueError("a name must be text")
    name = " ".join(text.split())
    if not name or len(name) > NAME_MAX or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"name {text[:40]!r} must be 1 to {NAME_MAX} printable characters")
    if name.startswith("#"):
        raise ValueError("a name may not start with '#' (NAME.txt comment lines do)")
    return name


@_locked
def rename(root: Path, faceset: str, name: str, log: Log = print) -> dict:
    """Write ``name`` into the faceset's NAME.txt (a recorded run)."""
    name = clean_name(name)
    request = {"faceset": faceset, "name": name}
    done = _done_already(root, "rename", request, log)
    if done:
        return done
    fdir, m = _faceset(root, faceset)
    new = copy.deepcopy(m)
    noted(new, "rename", name=name)
    after = {f"{faceset}/{NAME_FILE}": f"{name}\n".encode("utf-8"),
             f"{faceset}/{MANIFEST_NAME}": new}
    changed = [f"{faceset}/{NAME_FILE}", f"{faceset}/{MANIFEST_NAME}"]
    return _commit(root, "rename", [], after, changed, [], dict(request, request=request), log)


def _file_list(files) -> list:
    """A request's face files, in a form that compares equal however they were given."""
    return sorted(dict.fromkeys(files)) if isinstance(files, (list, tuple)) and all(
        isinstance(f, str) for f in files) else files


def _pick(m: dict, files: list[str], where: str) -> list[dict]:
    by_file = {f["file"]: f for f in m["faces"]}
    missing = [f for f in files if f not in by_file]
    if not files or missing:
        raise ValueError(f"{where}: no face {missing[0] if missing else '(none given)'} in "
                         "its faces[]")
    return [by_file[f] for f in dict.fromkeys(files)]


@_locked
def drop_faces(root: Path, faceset: str, files: list[str], log: Log = print) -> dict:
    """Move faces (``faces/NNN.png``) of a faceset to ``faces/_dropped/``; bundles rebuilt."""
    request = {"faceset": faceset, "files": _file_list(files)}
    done = _done_already(root, "drop-faces", request, log)
    if done:
        return done
    fdir, m = _faceset(root, faceset)
    picked = _pick(m, files, str(fdir / MANIFEST_NAME))
    moves, taken, parked = [], set(), {}
    for face in sorted(picked, key=lambda f: f["rank"]):
        dest = drop_destination(fdir, face["file"], taken)
        moves.append((f"{faceset}/{face['file']}", f"{faceset}/{dest}"))
        parked[face["file"]] = dest
    new = Faceset.of(m, fdir).dropping(parked, REVIEW_REASON, runs.THIS_RUN)
    noted(new, "drop-faces", removed=[f["key"] for f in picked], kept=len(new["faces"]))
    after = {f"{faceset}/{MANIFEST_NAME}": new}
    return _commit(root, "drop-faces", moves, after, runs.faceset_files(root, faceset),
                   [faceset], {"faceset": faceset, "dropped": len(picked), "request": request},
                   log,
                   listing={faceset: faceset_listing(new)})


@_locked
def move_face(root: Path, faceset: str, files: list[str], into: str, log: Log = print) -> dict:
    """Move faces of ``faceset`` into faceset ``into`` (re-ranked by score there)."""
    if into == faceset:
        raise ValueError(f"{faceset}: a face cannot move into its own faceset")
    request = {"from": faceset, "files": _file_list(files), "into": into}
    done = _done_already(root, "move-face", request, log)
    if done:
        return done
    sdir, sm = _faceset(root, faceset)
    ddir, dm = _faceset(root, into)
    picked = _pick(sm, files, str(sdir / MANIFEST_NAME))
    nxt = next_face_number(dm, ddir)
    moves, renamed, arriving = [], {}, []
    for face in sorted(picked, key=lambda f: f["rank"]):
        new_file = f"{FACES_DIR}/{nxt:03d}.png"
        nxt += 1
        moves.append((f"{faceset}/{face['file']}", f"{into}/{new_file}"))
        renamed[face["file"]] = new_file
        arriving.append(dict(face, file=new_file, moved_from=faceset))
    src = Faceset.of(sm, sdir).without(set(renamed))
    dest = Faceset.of(dm, ddir).adding(arriving)
    noted(src, "move-face", moved_to=into, files=renamed, kept=len(src["faces"]))
    noted(dest, "move-face", moved_from=faceset, added=len(picked), kept=len(dest["faces"]))
    after = {f"{faceset}/{MANIFEST_NAME}": src, f"{into}/{MANIFEST_NAME}": dest}
    changed = runs.faceset_files(root, faceset) + runs.faceset_files(root, into)
    return _commit(root, "move-face", moves, after, changed, [faceset, into],
                   {"from": faceset, "into": into, "moved": len(picked), "request": request},
                   log,
                   listing={faceset: faceset_listing(src), into: faceset_listing(dest)})



@_locked
def quarantine(root: Path, faceset: str, log: Log = print) -> dict:
    """Move a faceset folder to ``_quarantine/`` and out of the listing (bundles and all)."""
    request = {"faceset": faceset}
    done = _done_already(root, "quarantine", request, log)
    if done:
        return done
    fdir, m = _faceset(root, faceset)
    folder = safe_member_path(root, runs.free_name(root, f"{QUARANTINE_DIR}/{faceset}"),
                              "quarantine")
    rel = folder.relative_to(root).as_posix()
    new = copy.deepcopy(m)
    noted(new, "quarantine", moved_to=rel)
    after = {f"{rel}/{MANIFEST_NAME}": new}
    record = {"name": faceset, "moved_to": rel, "faces": len(m["faces"]), "run": runs.THIS_RUN,
              "when": now()}
    return _commit(root, "quarantine", [(faceset, rel)], after, [f"{faceset}/{MANIFEST_NAME}"],
                   [], {"faceset": faceset, "moved_to": rel, "request": request}, log,
                   remove={faceset},
                   section=(QUARANTINED_SECTION, record))


@_locked
def undo(root: Path, run_id: str | None = None, log: Log = print) -> dict:
    """Reverse a recorded run (default: the last one in effect); the undo's ``runs[]``
    entry. Refused (ManifestError, nothing changed) as the ``undo`` command refuses."""
    target, problems = runs.plan_undo(root, run_id)
    if problems:
        raise ManifestError(f"{root}: cannot undo run {target['id']}: " + "; ".join(problems[:5]))
    return runs.execute(root, runs.prepare_undo(root, target["id"]), log)


def _touched(rec: dict) -> list[str]:
    """The facesets a run record's moves and files name (top-level or one folder down)."""
    paths = [mv["from"] for mv in rec.get("moves", [])] + [mv["to"] for mv in
                                                            rec.get("moves", [])]
    paths += rec.get("installs", []) + rec.get("changed", [])
    return sorted({p.split("/")[0] for p in paths if FACESET_NAME.fullmatch(p.split("/")[0])}
                  | {p.split("/")[1] for p in paths if p.count("/") >= 1
                     and FACESET_NAME.fullmatch(p.split("/")[1])})


def history(root: str | Path) -> list[dict]:
    """The top-level manifest's ``runs[]`` with each run's summary, the facesets it
    touched (from its run record) and ``pruned`` (its data gone: no undo)."""
    root = Path(root).resolve()
    out = []
    for e in runs.load_top(root).get(RUNS_SECTION, []):
        rec = runs.record_of(root, e["id"]) or {}
        out.append(dict(e, summary=rec.get("summary", {}), facesets=_touched(rec),
                        pruned=(runs.run_dir(root, e["id"]) / PRUNED_FILE).is_file()))
    return out


def facesets_shown(root: Path, names: list[str], most: int = 8) -> str:
    """"faceset_001 (Anna), faceset_004 and 3 more": the facesets a run touched, by label."""
    return ", ".join(display_name(root, name) for name in names[:most]) + (
        f" and {len(names) - most} more" if len(names) > most else "")


def describe_run(root: Path, entry: dict) -> str:
    """What a run was, when, and what undoing it changes, in one line (undo names the run
    it reverses before it does)."""
    rec = runs.record_of(root, entry["id"]) or {}
    summary = rec.get("summary") if isinstance(rec.get("summary"), dict) else {}
    facts = ", ".join(f"{k} {v}" for k, v in sorted(summary.items())
                      if k != "request" and isinstance(v, (int, float, str))
                      and not isinstance(v, bool))
    shown = facesets_shown(root, _touched(rec))
    return (f"run {entry['id']} ({entry['step']}, {entry.get('when', '?')}"
            f"{': ' + facts if facts else ''}); undoing it moves {len(rec.get('moves', []))} "
            f"files or folders back and restores {len(rec.get('changed', []))} files"
            + (f" (facesets {shown})" if shown else ""))


# ---- pruning parked data: history --keep N ------------------------------------------------
@dataclass
class PrunePlan:
    """What ``history --keep`` removes: per run older than the newest ``keep``, its
    before/ and after/ copies, and the faceset folders an undo of it parked."""
    root: Path
    keep: int
    runs: list[str] = field(default_factory=list)        # runs whose data goes
    paths: list[Path] = field(default_factory=list)      # folders removed
    size: int = 0                                        # bytes freed

    def lines(self) -> list[str]:
        return [f"remove {p.relative_to(self.root).as_posix()}/" for p in self.paths]

    def line(self) -> str:
        return (f"{len(self.runs)} runs pruned ({', '.join(self.runs[:6])}"
                f"{' ...' if len(self.runs) > 6 else ''}), {len(self.paths)} folders, "
                f"{self.size / 1e6:.1f} MB freed; pruned runs can no longer be undone"
                if self.runs else f"nothing to prune (the newest {self.keep} runs are kept)")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _parked_faceset(path: Path) -> bool:
    """A faceset folder face-sets parked (its own manifest), not a link."""
    try:
        return path.is_dir() and not path.is_symlink() and \
            load_manifest(path / MANIFEST_NAME, SWAP_FACESET_MANIFEST) is not None
    except (ManifestError, ValueError):
        return False


def plan_prune(root: Path, keep: int) -> PrunePlan:
    """The parked data of every run but the newest ``keep`` (see PrunePlan). A run still in
    effect keeps what the library lists (``_merged/``, ``_split/`` archives, dropped PNGs):
    only its before/after copies go."""
    if not isinstance(keep, int) or keep < 0:
        raise ValueError(f"--keep {keep!r}: give a number of runs, 0 or more")
    plan = PrunePlan(root, keep)
    entries = runs.load_top(root).get(RUNS_SECTION, [])
    for e in entries[:max(0, len(entries) - keep)]:
        folder = runs.run_dir(root, e["id"])
        if (folder / PRUNED_FILE).is_file() or not folder.is_dir():
            continue
        rec = runs.record_of(root, e["id"])
        plan.runs.append(e["id"])
        plan.paths += [d for d in (folder / BEFORE_DIR, folder / AFTER_DIR)
                       if d.is_dir() and not d.is_symlink()]
        if e.get("undone_by"):   # where its undo parked the folders it had brought in
            plan.paths += [root / mv["from"] for mv in rec["moves"]
                           if mv["from"].split("/")[0] in (ADDED_DIR, SPLIT_DIR)
                           and _parked_faceset(root / mv["from"])]
    plan.size = sum(_size(p) for p in plan.paths)
    return plan


@_locked
def prune(root: Path, keep: int, log: Log = print) -> PrunePlan:
    """Carry out ``plan_prune``: each run's data removed, then its ``pruned.json`` written
    (history and undo read it); emptied parking folders removed."""
    plan = plan_prune(root, keep)
    for path in plan.paths:
        shutil.rmtree(path)
    for run_id in plan.runs:
        atomic_write_json(runs.run_dir(root, run_id) / PRUNED_FILE,
                          {"when": now(), "keep": keep})
    # and the build folders of runs in effect, emptied when their facesets moved in
    builds = [d for top in (ADDED_DIR, SPLIT_DIR) if (root / top).is_dir()
              for d in (root / top).iterdir() if not d.name.startswith(".")]
    runs.remove_empty_parking(root, [p.relative_to(root).as_posix() + "/x"
                                     for p in plan.paths + builds])
    log(plan.line())
    return plan
