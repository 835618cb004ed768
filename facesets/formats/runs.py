"""Run records of the identity operations on a swap-ready folder (docs/manifest-format.md,
"Runs and undo").

Every operation that changes a swap-ready folder (consolidate, audit-multiface apply, undo...)
is a *run*: a hidden folder ``SWAP_READY/.runs/<id>/`` holding

  run.json   the record (``face-sets/run``): the step, the moves it makes (from -> to,
             relative to SWAP_READY, in order), the files it changes, the facesets whose
             bundles it rebuilds, and the counts for the operator;
  before/    the previous bytes of every file it changes (same relative paths), which
             ``undo`` puts back;
  after/     the new bytes of the manifests it installs (a run that computes its manifests
             from the disk as it goes, like audit-multiface, has none);
  pruned.json  written by `history --keep N` when it removed before/ and after/ (and the
             folders an undo parked): the run is listed still but can no longer be undone.
  run.sha256 the digest of run.json (``record_digest``), written with it: a record edited
             by hand (an entry of moves[] removed...) no longer matches and is refused.
             The run's ``runs[]`` entry keeps the same digest once the run is done.

The run folder is built under ``.runs/.<id>.partial/`` and renamed into place whole, so a
run folder either is complete or does not exist. The run is done once the top-level
manifest's ``runs[]`` names it (``runs_entry``); a run folder it does not name is pending and
is finished by the next command on that folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from ..io.fsutil import fsync_dir, read_json
from .manifest import ManifestError, _Fields

RUN_RECORD = "face-sets/run"
RUN_VERSION = 1
RUNS_DIR = ".runs"            # SWAP_READY/.runs/<id>/
RUN_FILE = "run.json"
PRUNED_FILE = "pruned.json"   # .runs/<id>/pruned.json: `history --keep` removed its data
DIGEST_FILE = "run.sha256"    # the record's digest (record_digest), beside it
DIGEST_KEY = "record_sha256"  # ... and in the run's runs[] entry
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# .runs/report-pending: the id of the last run whose index.html is not rewritten yet (written
# before the run's commit, removed by write_report): a re-run after a kill between the two
# knows its run is done but its report is not
REPORT_PENDING = "report-pending"
BEFORE_DIR = "before"
AFTER_DIR = "after"
PARTIAL_SUFFIX = ".partial"   # .runs/.<id>.partial/ while a run folder is written
RUNS_SECTION = "runs"         # the top-level manifest's list of runs
MERGED_DIR = "_merged"        # SWAP_READY/_merged/: facesets consolidate merged away
MERGED_SECTION = "merged"     # the top-level manifest's consolidate records
RUN_ID = re.compile(r"[0-9]{4}-[0-9a-f]{8,16}|[0-9a-f]{16}")
# steps that compute their manifests as they go (no after/): the step itself finishes them
SELF_FINISHING = ("audit-multiface",)


def new_run_id(seq: int, content) -> str:
    """``NNNN-hhhhhhhh``: the run's sequence number in the folder and a digest of what it
    does, so the same plan on the same folder (a re-run after a kill) gets the same id."""
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return f"{seq:04d}-{digest[:8]}"


def run_record(run_id: str, step: str, moves: list[tuple[str, str]], changed: list[str],
               installs: list[str], rebuild: list[str], summary: dict,
               undoes: str | None = None) -> dict:
    """``.runs/<id>/run.json``. ``changed``: files whose previous bytes are in before/
    (those that existed); ``installs``: files whose new bytes are in after/, written after
    the moves; ``rebuild``: faceset folders whose bundles are rebuilt from their installed
    manifest; ``undoes``: the run an undo reverses."""
    return {"format": RUN_RECORD, "version": RUN_VERSION, "id": run_id, "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "undoes": undoes,
            "moves": [{"from": a, "to": b} for a, b in moves], "changed": changed,
            "installs": installs, "rebuild": rebuild, "summary": summary}


def record_digest(record: dict) -> str:
    """What ``run.sha256`` and the ``runs[]`` entry keep of a run record: the sha256 of its
    canonical JSON (keys sorted) without ``created``, so the proof covers what the run does,
    not the file's layout or the hour it was planned (a re-run after a kill plans the same
    digest)."""
    body = {k: v for k, v in record.items() if k != "created"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False,
                                     separators=(",", ":")).encode("utf-8")).hexdigest()


def digest_text(digest: str) -> bytes:
    """``run.sha256``'s body: the digest and the file it proves."""
    return f"{digest}  {RUN_FILE}\n".encode()


def runs_entry(record: dict) -> dict:
    """A run's entry in the top-level manifest's ``runs[]`` (``undone_by`` is added when an
    undo reverses it), with its record's digest."""
    return {"id": record["id"], "step": record["step"], DIGEST_KEY: record_digest(record),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "undoes": record.get("undoes"),
            "moves": len(record["moves"]), "changed": len(record["changed"]),
            "summary": record.get("summary", {}), "folder": f"{RUNS_DIR}/{record['id']}",
            "undone_by": None}


def check_relpath(c: _Fields, value, field: str) -> str:
    """A path inside the swap-ready folder, never into .runs/ and never out of it."""
    if not isinstance(value, str) or not value or value.startswith("/") or "\\" in value \
            or "\x00" in value or ".." in value.split("/") or value.split("/")[0] == RUNS_DIR:
        c.fail(field, f"{value!r} is not a path inside the swap-ready folder")
    return value


def _read_digest(path: Path) -> str | None:
    """The digest ``run.sha256`` keeps (None when there is none)."""
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        head = fh.read(200)
    digest = head.split(b" ", 1)[0].decode("ascii", "replace").strip()
    if not SHA256_HEX.fullmatch(digest) or head != digest_text(digest):
        raise ManifestError(f"{path}: not a sha256 line for {RUN_FILE}; the run record "
                            "cannot be trusted (restore .runs/ from a backup)")
    return digest


def _check_digest(path: Path, record: dict, expected: str | None, pending: bool) -> None:
    """A record proves it is the one face-sets wrote: its digest matches ``run.sha256``
    beside it and ``expected`` (its runs[] entry's). A pending run needs run.sha256; a done
    run recorded by a face-sets before digests has neither and is taken as it is."""
    digest = record_digest(record)
    kept = _read_digest(path.parent / DIGEST_FILE)
    if kept is None and pending:
        raise ManifestError(f"{path}: {DIGEST_FILE} is missing beside it, so this pending "
                            "run cannot be proven to be the one face-sets wrote; restore "
                            f"{RUNS_DIR}/ from a backup")
    for what, want in ((DIGEST_FILE, kept), (f"its runs[] entry's {DIGEST_KEY}", expected)):
        if want is not None and want != digest:
            raise ManifestError(f"{path}: its content does not match {what} (the record was "
                                "edited after face-sets wrote it); restore it from a backup, "
                                "face-sets will not carry out or undo an edited run")


def load_run(path: str | os.PathLike, expected: str | None = None,
             pending: bool = True) -> dict:
    """Read and check a ``run.json``: one error naming the file and the field. Then it
    must match its digest (``_check_digest``): ``expected`` is the digest in its runs[]
    entry (None: not done yet, or done by a face-sets before digests, ``pending=False``)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such run record")
    m = read_json(path)
    c = _Fields(path)
    if not isinstance(m, dict) or m.get("format") != RUN_RECORD:
        raise ManifestError(f"{path}: not a {RUN_RECORD} record")
    if c.int(m, "version", "") > RUN_VERSION:
        raise ManifestError(f"{path}: run record v{m['version']} is newer than this "
                            "face-sets; upgrade face-sets")
    if not RUN_ID.fullmatch(c.str(m, "id", "")) or m["id"] != path.parent.name:
        c.fail("id", f"{m['id']!r} is not this run folder's id")
    c.str(m, "step", "")
    if m.get("undoes") is not None and not RUN_ID.fullmatch(str(c.str(m, "undoes", ""))):
        c.fail("undoes", "is not a run id")
    for f, mv in c.items(m, "moves", ""):
        check_relpath(c, c.str(mv, "from", f), f"{f}.from")
        check_relpath(c, c.str(mv, "to", f), f"{f}.to")
    for key in ("changed", "installs", "rebuild"):
        for i, rel in enumerate(c.strs(m, key, "")):
            check_relpath(c, rel, f"{key}[{i}]")
    c.obj(m, "summary", "")
    _check_digest(path, m, expected, pending)   # well-formed, and the very record written
    return m


def report_pending_path(root: str | os.PathLike) -> Path:
    return Path(root) / RUNS_DIR / REPORT_PENDING


def read_report_pending(root: str | os.PathLike) -> str | None:
    """The run id ``report-pending`` names (None: none, or not a run id: ignored, the
    report is rewritten anyway by the next command that writes it)."""
    path = report_pending_path(root)
    if path.is_symlink() or not path.is_file():
        return None
    with open(path, "rb") as fh:
        text = fh.read(64).decode("ascii", "replace").strip()
    return text if RUN_ID.fullmatch(text) else None


def clear_report_pending(root: str | os.PathLike) -> None:
    """The report of ``root`` was rewritten: no run's report is pending any more."""
    path = report_pending_path(root)
    if path.is_file() and not path.is_symlink():
        path.unlink()
        fsync_dir(path.parent)


def check_runs_section(top: dict, path: str | os.PathLike) -> list[dict]:
    """The top-level manifest's ``runs[]``, checked (an older export has none)."""
    c = _Fields(Path(path))
    for f, e in c.items(top, RUNS_SECTION, "", required=False):
        if not RUN_ID.fullmatch(c.str(e, "id", f)):
            c.fail(f"{f}.id", f"{e['id']!r} is not a run id")
        c.str(e, "step", f)
        c.get(e, "undone_by", f, (str, type(None)), "a run id or null", required=False)
        c.get(e, "undoes", f, (str, type(None)), "a run id or null", required=False)
        if c.str(e, DIGEST_KEY, f, required=False) is not None \
                and not SHA256_HEX.fullmatch(e[DIGEST_KEY]):
            c.fail(f"{f}.{DIGEST_KEY}", "is not a sha256 (64 hex digits)")
    return top.get(RUNS_SECTION, [])


def merged_record(run_id: str, survivor: str, merged: list[dict], similarity: float) -> dict:
    """A consolidate merge's entry in the top-level manifest's ``merged[]``: the survivor,
    each faceset merged into it (name, where its folder went, faces added, its similarity
    to the survivor) and the group's smallest pairwise similarity."""
    return {"run": run_id, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": "consolidate",
            "survivor": survivor, "merged": merged, "min_similarity": round(similarity, 4)}
