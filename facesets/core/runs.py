"""Recorded runs on a swap-ready folder: plan, carry out, finish after a kill, undo.

A step that changes a swap-ready folder (consolidate, dedup-optimize, audit-multiface apply)
builds its run with ``prepare``: the moves it makes, the manifests it changes (their previous
bytes are kept in ``.runs/<id>/before/``) and their new bodies (``after/``). ``execute``
carries it out in redoable steps:
  1. each move, a rename (done when the source is gone and the destination is there);
  2. each installed manifest, bundles first where the faceset is rebuilt (same bytes each
     time: a redo changes nothing);
  3. the top-level manifest with the run's ``runs[]`` entry, in one atomic write: the run
     is done.
A killed run is finished by the next command on the folder (``finish_pending``). ``undo``
is a run too: the moves reversed (last first), the ``before/`` bytes installed, the bundles
rebuilt, and the undone run's entry marked ``undone_by``. The record format is in
formats/runs.py.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

from ..formats.manifest import (AUDIT_PLAN_FILE, SWAP_FACESET_MANIFEST, SWAP_MANIFEST,
                                ManifestError, load_manifest, safe_member_path, write_manifest)
from ..formats.runs import (AFTER_DIR, BEFORE_DIR, DIGEST_FILE, DIGEST_KEY, PARTIAL_SUFFIX,
                            PRUNED_FILE, RUN_FILE, RUNS_DIR, RUNS_SECTION, SELF_FINISHING,
                            check_runs_section, digest_text, load_run, new_run_id,
                            read_report_pending, record_digest, report_pending_path, run_record,
                            runs_entry)
from ..formats.swapset import (DROPPED_DIR, FACES_DIR, MANIFEST_NAME, PREVIEW,
                               preview_faces, remove_faceset_temps, write_bundles,
                               write_previews)
from ..io.fsutil import (atomic_write_bytes, atomic_write_json, commit_dir, commit_point,
                         fsync_dir, internal_dir, json_bytes, read_json, remove_on_error,
                         remove_temp_files, write_new_file)

UNDO = "undo"
THIS_RUN = "(this run)"   # stands for the run's id in the new manifests until it is known


def load_top(root: Path) -> dict:
    top = load_manifest(root / MANIFEST_NAME, SWAP_MANIFEST)
    check_runs_section(top, root / MANIFEST_NAME)
    return top


def move_once(root: Path, src_rel: str, dest_rel: str,
              fields: tuple[str, str] = ("moves.from", "moves.to"), strict: bool = True) -> bool:
    """One move of a plan, redoable: a rename that happened or did not. True when it is done
    (source gone, destination there). Both there: an error when ``strict``, else nothing is
    moved (False)."""
    src = safe_member_path(root, src_rel, fields[0])
    dest = safe_member_path(root, dest_rel, fields[1])
    if src.exists() and not dest.exists():
        internal_dir(root, dest.parent.relative_to(root))   # no symlink on the way
        os.replace(src, dest)
        fsync_dir(dest.parent)
        fsync_dir(src.parent)
        commit_point(f"{src} -> {dest}")
    elif strict and src.exists() and dest.exists():
        raise ManifestError(f"{root}: cannot move {src_rel} to {dest_rel}: both exist; "
                            "move one of them away by hand")
    return dest.exists() and not src.exists()


def free_name(root: Path, rel: str) -> str:
    """``rel``, or ``rel.N`` when that name is taken in ``root``: where a run moves a folder
    aside (``_merged/``, ``_quarantine/``, ``_masked/``, ``_thin/``) without overwriting."""
    out, n = rel, 1
    while (root / out).exists():
        out, n = f"{rel}.{n}", n + 1
    return out


def remove_empty_parking(root: Path, rels: list[str]) -> None:
    """Remove the folders above ``rels`` that are empty now and are face-sets' parking
    folders (a path part starting with ``_``: ``_merged/``, ``faces/_dropped/``,
    ``_added/<tag>/``...), deepest first; never ``root`` or a folder holding anything."""
    dirs = set()
    for rel in rels:
        parts = Path(rel).parts[:-1]
        for k in range(len(parts), 0, -1):
            if any(p.startswith("_") for p in parts[:k]):
                dirs.add(Path(*parts[:k]))
    for d in sorted(dirs, key=lambda p: -len(p.parts)):
        path = root / d
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
            fsync_dir(path.parent)


def run_dir(root: Path, run_id: str) -> Path:
    return root / RUNS_DIR / run_id


def _clean(root: Path) -> None:
    """Remove what a kill left half-written: temp files of the top manifest, and run folders
    still being written (``.runs/.<id>.partial/``: nothing of the library changed yet)."""
    remove_temp_files(root, _TOP_FILES)
    runs = root / RUNS_DIR
    if runs.is_dir():
        for p in runs.iterdir():
            if p.name.startswith(".") and p.name.endswith(PARTIAL_SUFFIX) and p.is_dir() \
                    and not p.is_symlink():
                shutil.rmtree(p)


_TOP_FILES = re.compile(re.escape(MANIFEST_NAME))


def _before(root: Path, changed: list[str]) -> dict[str, bytes]:
    return {rel: safe_member_path(root, rel, "changed").read_bytes() for rel in changed
            if (root / rel).is_file()}


def plan_id(root: Path, step: str, moves: list[tuple[str, str]], changed: list[str],
            undoes: str | None = None, before: dict[str, bytes] | None = None) -> str:
    """The id ``prepare`` gives this plan: its sequence number in the folder and a digest of
    the plan and the bytes it changes (a re-run after a kill gets the same id)."""
    before = _before(root, changed) if before is None else before
    # the digest of each file's bytes, not its text: bundles are binary, and a JSON dump of
    # every bundle decoded as text took most of a 300-faceset run's time
    content = {"step": step, "moves": moves, "undoes": undoes,
               "before": {k: hashlib.sha256(v).hexdigest() for k, v in before.items()}}
    return new_run_id(len(load_top(root).get(RUNS_SECTION, [])) + 1, content)


def _refuse_symlinks(root: Path, moves: list[tuple[str, str]], after: dict,
                     rebuild: list[str]) -> None:
    """Before anything is recorded: no folder the run will write in (``.runs``, where moves
    land, where manifests go, a rebuilt faceset's faces/, faces/_dropped/, previews/) is a
    symlink: a refused run leaves nothing to finish."""
    folders = {Path(RUNS_DIR)} | {Path(dest).parent for _, dest in moves} \
        | {Path(rel).parent for rel in after}
    # every faceset whose manifest is installed gets its preview redrawn (write_previews)
    installed = {Path(rel).parent for rel in after
                 if Path(rel).name == MANIFEST_NAME and rel != MANIFEST_NAME}
    for d in set(map(Path, rebuild)) | installed:
        folders |= {d / FACES_DIR / DROPPED_DIR, d / PREVIEW}
    for folder in folders:
        internal_dir(root, folder, create=False)


def prepare(root: Path, step: str, moves: list[tuple[str, str]], changed: list[str],
            after: dict[str, dict | bytes], rebuild: list[str], summary: dict,
            undoes: str | None = None, run_id: str | None = None,
            before: dict[str, bytes] | None = None) -> str:
    """Write ``.runs/<id>/`` for a run (see the module doc) and return its id. ``after``:
    relative path -> new manifest body; ``before``: previous bytes to keep instead of the
    current bytes of ``changed`` (undo keeps none). The id is ``run_id`` or derived from the
    plan, so a re-run after a kill that came before this point gets the same id."""
    root = Path(root)
    _refuse_symlinks(root, moves, after, rebuild)
    _clean(root)
    if before is None:
        before = _before(root, changed)
    if run_id is None:
        run_id = plan_id(root, step, moves, changed, undoes, before)
    final = run_dir(root, run_id)
    if final.exists():
        return run_id   # written already by a run a kill interrupted: same plan, same id
    part = remove_on_error(internal_dir(root, RUNS_DIR) / f".{run_id}{PARTIAL_SUFFIX}")
    if part.exists():
        shutil.rmtree(part)
    for rel, data in before.items():
        write_new_file(part / BEFORE_DIR / rel, data)
    for rel, body in after.items():
        write_new_file(part / AFTER_DIR / rel,
                       body if isinstance(body, bytes) else json_bytes(body) + b"\n")
    atomic_write_json(part / RUN_FILE, run_record(run_id, step, moves, sorted(before),
                                                  list(after), rebuild, summary, undoes))
    # the record's proof, inside the folder that appears whole: a pending run is trusted
    # only while run.json still says what it said then
    atomic_write_bytes(part / DIGEST_FILE,
                       digest_text(record_digest(read_json(part / RUN_FILE))))
    commit_dir(part, final)
    return run_id


def start(root: Path, step: str, moves: list[tuple[str, str]], changed: list[str],
          after: dict[str, dict], rebuild: list[str], summary: dict) -> str:
    """``prepare`` a step's run: its id replaces ``THIS_RUN`` in the new manifests."""
    before = _before(root, changed)
    run_id = plan_id(root, step, moves, changed, before=before)
    _fill(after, run_id)
    return prepare(root, step, moves, changed, after, rebuild, summary, run_id=run_id,
                   before=before)


# updates of the top-level manifest that the operation in progress adds to the run it
# commits (core/library.Library.operation: the settings its flags chose)
_TOP_UPDATES: ContextVar[tuple] = ContextVar("top_updates", default=())


@contextmanager
def also_in_top(update: Callable[[dict], None]):
    """While open, every run ``commit`` makes also applies ``update(top)`` to the top-level
    manifest it installs (one commit: undone with the run)."""
    token = _TOP_UPDATES.set(_TOP_UPDATES.get() + (update,))
    try:
        yield
    finally:
        _TOP_UPDATES.reset(token)


def commit(root: Path, step: str, after: dict[str, dict | bytes], changed: list[str],
           summary: dict, log: Callable[[str], None] = print,
           moves: list[tuple[str, str]] = (), rebuild: list[str] = (),
           listing: dict[str, dict] | None = None, remove: set[str] = frozenset(),
           added: list[dict] = (), update: Callable[[dict], None] | None = None) -> dict:
    """The one folder commit of every step that changes a library: the top-level manifest
    made from the current one (the facesets[] entries ``listing`` names replaced, those in
    ``remove`` left out, ``added`` appended, then ``update(top)``: a step's own section,
    e.g. merged[] or eras[]; then the updates ``also_in_top`` holds open; its summary's
    counts brought in line with the listing) joins ``after`` when any of those is given,
    then the run is started and executed (each of its commits calls fsutil's commit hook).
    Returns the run's ``runs[]`` entry."""
    root = Path(root)
    moves, changed, rebuild = list(moves), list(changed), list(rebuild)
    extra = _TOP_UPDATES.get()
    if listing or remove or added or update is not None or extra:
        top = load_top(root)
        new_top = copy.deepcopy(top)
        listing = listing or {}
        new_top["facesets"] = [listing.get(e["name"], e) for e in top.get("facesets", [])
                               if e["name"] not in remove] + list(added)
        if update is not None:
            update(new_top)
        for more in extra:
            more(new_top)
        counts = new_top["summary"] if isinstance(new_top.get("summary"), dict) else {}
        counts["facesets"] = len(new_top["facesets"])
        counts["faces_kept"] = sum(int(e.get("faces", 0)) for e in new_top["facesets"])
        new_top["summary"] = counts
        after = dict(after, **{MANIFEST_NAME: new_top})
        if MANIFEST_NAME not in changed:
            changed.append(MANIFEST_NAME)
    return execute(root, start(root, step, moves, changed, after, rebuild, summary), log)


def _fill(obj, run_id: str) -> None:
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list) else ()
    for k, v in list(items):
        if v == THIS_RUN:
            obj[k] = run_id
        else:
            _fill(v, run_id)


def add_entry(top: dict, record: dict) -> None:
    """Name a finished run in the top-level manifest (once), with its record's digest; an
    undo marks the run it reverses."""
    runs = top.setdefault(RUNS_SECTION, [])
    if any(e.get("id") == record["id"] for e in runs):
        return
    runs.append(runs_entry(record))
    if record.get("undoes"):
        for e in runs:
            if e.get("id") == record["undoes"]:
                e["undone_by"] = record["id"]


def record_of(root: Path, run_id: str, top: dict | None = None) -> dict | None:
    """The run record of ``run_id`` in ``root`` (None when it has no run folder), proven
    by its digest: the one in its ``runs[]`` entry once the run is done, else the
    ``run.sha256`` beside it (``top``: the top-level manifest, when read already)."""
    path = run_dir(root, run_id) / RUN_FILE
    if not path.is_file():
        return None
    entries = (load_top(root) if top is None else top).get(RUNS_SECTION, [])
    entry = next((e for e in entries if e.get("id") == run_id), None)
    return load_run(path, expected=entry.get(DIGEST_KEY) if entry else None,
                    pending=entry is None)


def execute(root: Path, run_id: str, log: Callable[[str], None] = print) -> dict:
    """Carry out (or finish) a prepared run; returns its ``runs[]`` entry."""
    root = Path(root)
    folder = run_dir(root, run_id)
    top_now = load_top(root)
    rec = record_of(root, run_id, top_now)
    if rec is None:
        raise ManifestError(f"{folder / RUN_FILE}: no such run record")
    done = next((e for e in top_now.get(RUNS_SECTION, []) if e["id"] == run_id), None)
    if done is not None:
        return done
    _check_kept_files(folder, rec)
    # every manifest it installs is checked like any manifest before anything moves
    bodies = {rel: load_manifest(folder / AFTER_DIR / rel, SWAP_MANIFEST if rel == MANIFEST_NAME
                                 else SWAP_FACESET_MANIFEST)
              for rel in rec["installs"] if Path(rel).name == MANIFEST_NAME}
    moved = sum(move_once(root, mv["from"], mv["to"]) for mv in rec["moves"])
    # no empty _merged/, faces/_dropped/, _added/<tag>/... left behind (an undo's or a
    # build folder's)
    remove_empty_parking(root, [mv["from"] for mv in rec["moves"]])
    rebuild = set(rec["rebuild"])
    for rel in rec["installs"]:
        if rel == MANIFEST_NAME:
            continue
        dest = safe_member_path(root, rel, "installs")
        fdir = dest.parent
        remove_faceset_temps(fdir)     # a write a kill interrupted
        src = folder / AFTER_DIR / rel
        if dest.name == MANIFEST_NAME:
            body = bodies[rel]
            # the grid shows the faces the faceset holds now (an undo's: the old ones
            # again); drawn before the manifest, so a redo after a kill still sees a change
            if not (fdir / PREVIEW).is_file() \
                    or preview_faces(_installed(dest)) != preview_faces(body):
                write_previews(fdir, body)
            if fdir.relative_to(root).as_posix() in rebuild:
                write_bundles(fdir, body)
                write_manifest(dest, body)
            else:
                atomic_write_bytes(dest, src.read_bytes())   # the manifest as it was
            continue
        atomic_write_bytes(dest, src.read_bytes())   # a bundle as it was
    if MANIFEST_NAME in bodies:
        top = bodies[MANIFEST_NAME]
        top[RUNS_SECTION] = load_top(root).get(RUNS_SECTION, [])
    else:
        top = load_top(root)
    add_entry(top, rec)
    atomic_write_bytes(report_pending_path(root), f"{run_id}\n".encode())
    write_manifest(root / MANIFEST_NAME, top)
    log(f"run {run_id} ({rec['step']}): {moved} moves, {len(rec['installs'])} manifests "
        "written")
    return next(e for e in top[RUNS_SECTION] if e["id"] == run_id)


def _installed(path: Path) -> dict | None:
    """The faceset manifest a run is about to replace (None: none, or not readable)."""
    try:
        return load_manifest(path, SWAP_FACESET_MANIFEST) if path.is_file() else None
    except (ManifestError, ValueError, OSError):
        return None


def _check_kept_files(folder: Path, rec: dict) -> None:
    """Every file the record names in after/ is there, before anything moves (one error
    naming the record and the field, not a half-carried-out run)."""
    for i, rel in enumerate(rec["installs"]):
        if not (folder / AFTER_DIR / rel).is_file():
            raise ManifestError(f"{folder / RUN_FILE}: installs[{i}] {rel!r} has no file in "
                                f"{AFTER_DIR}/; restore the run folder from a backup")


def pending(root: Path) -> list[str]:
    """Run folders the top-level manifest does not name yet (runs a kill interrupted)."""
    runs = root / RUNS_DIR
    if not runs.is_dir():
        return []
    named = {e["id"] for e in load_top(root).get(RUNS_SECTION, [])}
    return sorted(p.name for p in runs.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in named)


def report_pending(root: Path) -> str | None:
    """The last run of ``root`` when a kill came after its commit and before its report
    was rewritten (``report-pending`` names it and it is the newest ``runs[]`` entry): the
    re-run of that command finishes by rewriting the report."""
    run_id = read_report_pending(root)
    entries = load_top(root).get(RUNS_SECTION, []) if run_id else []
    return run_id if entries and entries[-1]["id"] == run_id else None


def finish_pending(root: Path, log: Callable[[str], None] = print) -> list[str]:
    """Finish every run a kill interrupted in ``root`` (in order); their ids."""
    root = Path(root)
    _clean(root)
    done = []
    for run_id in pending(root):
        rec = load_run(run_dir(root, run_id) / RUN_FILE, pending=True)
        if rec["step"] in SELF_FINISHING:
            if (root / AUDIT_PLAN_FILE).is_file():
                raise ManifestError(f"{root}: the {rec['step']} run {run_id} was interrupted; "
                                    f"finish it first (run `{rec['step']} apply` again)")
            # killed before its plan was written: nothing of the library changed
            shutil.rmtree(run_dir(root, run_id))
            continue
        log(f"finishing the interrupted {rec['step']} run {run_id}")
        execute(root, run_id, log)
        done.append(run_id)
    return done


# ---- undo ---------------------------------------------------------------------------------
def plan_undo(root: Path, run_id: str | None = None) -> tuple[dict, list[str]]:
    """The run to undo (``run_id``, default the last run not undone) and the problems that
    stop it (a later run still in effect, a moved file missing...)."""
    root = Path(root)
    runs = load_top(root).get(RUNS_SECTION, [])
    live = [e for e in runs if not e.get("undone_by") and e["step"] != UNDO]
    if run_id is None:
        if not live:
            raise ManifestError(f"{root / MANIFEST_NAME}: no run left to undo "
                                f"(see `library history {root}`)")
        target = live[-1]
    else:
        target = next((e for e in runs if e["id"] == run_id), None)
        if target is None:
            raise ManifestError(f"{root / MANIFEST_NAME}: no run {run_id!r} "
                                f"(see `library history {root}`)")
    rec = record_of(root, target["id"])
    problems = []
    if rec is None:
        problems.append(f"run {target['id']} has no run folder {RUNS_DIR}/{target['id']}")
        return target, problems
    if (run_dir(root, target["id"]) / PRUNED_FILE).is_file():
        problems.append(f"run {target['id']} was pruned (`library history --keep`): its "
                        "previous files are gone, so it can no longer be undone")
        return target, problems
    if target["step"] == UNDO:
        problems.append(f"run {target['id']} is an undo; re-run the step instead")
    if target.get("undone_by"):
        problems.append(f"run {target['id']} was undone already by {target['undone_by']}")
    later = [e["id"] for e in live[live.index(target) + 1:]] if target in live else []
    if later:
        problems.append(f"later runs are still in effect ({', '.join(later)}): undo them "
                        "first")
    for mv in rec["moves"]:
        if not (root / mv["to"]).exists() or (root / mv["from"]).exists():
            problems.append(f"{mv['to']} is not where run {target['id']} moved it "
                            f"(from {mv['from']})")
    for rel in rec["changed"]:
        kept = run_dir(root, target["id"]) / BEFORE_DIR / rel
        if not kept.is_file():
            problems.append(f"{RUNS_DIR}/{target['id']}/{BEFORE_DIR}/{rel} is missing")
        elif kept.name == MANIFEST_NAME:
            try:
                load_manifest(kept, SWAP_MANIFEST if rel == MANIFEST_NAME
                              else SWAP_FACESET_MANIFEST)
            except (ManifestError, ValueError) as exc:
                problems.append(str(exc))
    return target, problems


def prepare_undo(root: Path, target_id: str) -> str:
    """The undo run of ``target_id``: its moves reversed, its before/ bytes installed (the
    bundles too where they were kept; else rebuilt from the restored manifest)."""
    root = Path(root)
    rec = record_of(root, target_id)
    src = run_dir(root, target_id) / BEFORE_DIR
    after = {rel: (src / rel).read_bytes() for rel in rec["changed"]}
    kept = {str(Path(rel).parent) for rel in rec["changed"] if rel.endswith(".fsz")}
    moves = [(mv["to"], mv["from"]) for mv in reversed(rec["moves"])]
    return prepare(root, UNDO, moves, [], after, [d for d in rec["rebuild"] if d not in kept],
                   {"undoes": target_id, "undone_step": rec["step"]}, undoes=target_id,
                   before={})


def faceset_files(root: Path, name: str) -> list[str]:
    """A faceset's manifest and the bundles it names (those on disk), relative to ``root``:
    what a run that rebuilds its bundles keeps the previous bytes of."""
    m = load_manifest(Path(root) / name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
    out = [f"{name}/{MANIFEST_NAME}"]
    for key in ("top", "all"):
        b = (m.get("bundles") or {}).get(key)
        if isinstance(b, str) and b and (Path(root) / name / b).is_file():
            safe_member_path(Path(root) / name, b, f"bundles.{key}")
            out.append(f"{name}/{b}")
    return out
