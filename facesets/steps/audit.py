"""``audit-multiface``: re-check that every exported face PNG shows exactly one face.

The load-bearing invariant of ``.fsz`` bundles: the consumer re-detects every PNG and averages
all faces it finds, so a second face (or none) pollutes the face set.
  stage   queue every face PNG of an export-swap OUT (id = "faceset_NNN/faces/NNN.png", with
          the PNG's sha256 so a result never applies to a file that changed since);
  worker  (work/multiface_worker.py) detection only, one JSON Lines record per PNG:
          {id, path, faces, scores} or {id, path, error};
  apply   move PNGs whose count is not 1 into <faceset>/faces/_dropped/ (reversible), rebuild
          that faceset's bundles (export.rebuild_bundles), record provenance in both
          manifests: a written plan carried out in redoable steps (see below), so a killed
          apply is finished by the next and a second apply changes nothing. ``dry_run``
          prints the plan and changes nothing.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..core import runs
from ..core.cohesion import with_cohesion
from ..core.swapfaces import face_file as _face_file
from ..core.swapfaces import face_png_items
from ..core.swapfaces import faceset_name as _faceset_name
from ..formats.manifest import (AUDIT_PLAN, AUDIT_PLAN_FILE,
                                SWAP_FACESET_MANIFEST, SWAP_MANIFEST, ManifestError, audit_plan,
                                load_manifest, safe_member_path)
from ..formats.queue import (KIND_MULTIFACE, JsonlAppender, QueueError, latest_by_id, load_queue,
                             new_queue, read_jsonl, validate_multiface_results, write_queue)
from ..formats.swapset import (MANIFEST_NAME, MULTIFACE_AUDIT, drop_destination,
                               multiface_audit_record, rebuild_bundles, refresh_listing,
                               remove_faceset_temps)
from ..io.fsutil import atomic_write_json, fsync_dir, remove_temp_files, sha256_file
from ..io.imageio import ImageError, decode, read_header
from ..runtime.jobs import DEFAULT_PREFETCH_WORKERS, prefetch
from ..runtime.worker import ERROR, FAILED, OK, WorkerJob, WorkerParams, WorkItem, map_param_path

STEP = "audit-multiface"
REASON = MULTIFACE_AUDIT     # dropped[] reason: the PNG did not show exactly one face
SECTION = MULTIFACE_AUDIT    # provenance list in the top-level manifest


# ---- stage (WSL side) -------------------------------------------------------------------
def stage_multiface_queue(export_dir: str, queue_path: str, model: str | None,
                          model_root: str | None, det_size: int) -> int:
    """Queue every face PNG the export's faceset manifests list. Returns the item count."""
    out = Path(export_dir).resolve()
    top, items = face_png_items(out)
    from ..backends import default_model

    params = {"model": model or top.get("model") or default_model(),
              "model_root": os.path.abspath(os.path.expanduser(model_root)) if model_root
              else None,
              "det_size": int(det_size), "export": str(out), "export_run": top.get("run")}
    write_queue(queue_path, new_queue(KIND_MULTIFACE, params, items))
    return len(items)


# ---- worker (GPU side) ------------------------------------------------------------------
class MultifaceJob(WorkerJob):
    name = "multiface worker"
    unit = "png"

    def __init__(self, queue: dict, results: str, mapper, providers: str | None = None,
                 model_root: str | None = None, workers: int = DEFAULT_PREFETCH_WORKERS):
        self.params = queue["params"]
        self.workers = int(workers)
        self.results = Path(results)
        self.mapper = mapper
        self.providers = providers
        self.model_root = model_root or map_param_path(self.params.get("model_root"), mapper)
        self.log: JsonlAppender | None = None
        self.counts: dict[str, int] = {"one face": 0, "to drop": 0}

    def done_ids(self) -> set[str]:
        records, _ = read_jsonl(self.results)
        return set(latest_by_id(records))

    def start(self) -> None:
        from ..backends import load_backend

        model = self.params.get("model")
        if not isinstance(model, str) or not model:
            raise QueueError("multiface queue has no model parameter; re-stage the queue")
        self.backend = load_backend(map_param_path(model, self.mapper), self.model_root,
                                    self.providers, int(self.params.get("det_size", 640)),
                                    with_recognition=False)
        self.log = JsonlAppender(self.results)

    @staticmethod
    def _read(item: WorkItem):
        """(image, None) or (None, (status, why)): read and decode, on a prefetch thread."""
        try:
            with open(item.local, "rb") as fh:
                data = fh.read()
            read_header(data)
            return decode(data, 1), None
        except FileNotFoundError:
            return None, (FAILED, f"vanished before it could be read: {item.local}")
        except (ImageError, OSError) as exc:
            return None, (ERROR, str(exc))

    def process(self, items: Iterator[WorkItem]):
        # the next PNGs are read and decoded on threads while this one is detected
        for item, (image, problem) in prefetch(items, self._read, self.workers):
            if problem is not None:
                status, why = problem
                if status == ERROR:
                    self.log.add({"id": item.id, "path": item.path, "error": why})
                yield item, status, why
                continue
            faces = self.backend.detect(image)
            self.log.add({"id": item.id, "path": item.path, "faces": len(faces),
                          "scores": [round(float(f.det_score), 4) for f in faces]})
            self.counts["one face" if len(faces) == 1 else "to drop"] += 1
            yield item, OK, ""

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()

    def extra(self) -> dict:
        return dict(self.counts)


def make_multiface_job(queue: dict, params: WorkerParams, mapper):
    job = MultifaceJob(queue, params.results, mapper, params.providers, params.model_root,
                       params.workers)
    results = Path(params.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    return (job, Path(str(results) + ".lock"),
            results.with_name(results.stem + ".failures.jsonl"))


# ---- apply (WSL side) -------------------------------------------------------------------
# apply is a plan written first, then carried out step by step; every step can be redone:
#   1. the plan (OUT/.multiface_audit.plan.json): run id, the PNGs to drop and where each
#      goes, the facesets to rebuild, the counts for the record;
#   2. per PNG, a rename into faces/_dropped/ (done when the source is gone and the
#      destination is there);
#   3. per faceset, its bundles then its manifest (done once its history names the run);
#   4. the top-level manifest: every listing refreshed and the run's record (done once a
#      record names the run); then the plan file is removed.
# A killed apply is finished by the next one; an apply of a run already recorded changes
# nothing.
_OUT_FILES = re.compile(f"{re.escape(AUDIT_PLAN_FILE)}|{re.escape(MANIFEST_NAME)}")


@dataclass
class Drop:
    faceset: str
    file: str          # faces/NNN.png
    faces: int         # faces the worker found
    moved_to: str = ""  # faces/_dropped/NNN.png, chosen when planning
    key: str = ""


@dataclass
class AuditPlan:
    export: Path
    run_id: str = ""
    queue: str = ""
    results: str = ""
    drops: list[Drop] = field(default_factory=list)
    rebuild: list[str] = field(default_factory=list)      # facesets with a PNG gone already
    checked: int = 0
    unchecked: list[str] = field(default_factory=list)    # no result yet
    unreadable: list[str] = field(default_factory=list)   # the worker could not read it
    changed: list[str] = field(default_factory=list)      # file changed since staging
    gone: list[str] = field(default_factory=list)         # already moved away
    applied: dict | None = None                           # this run's record, once applied

    def facesets(self) -> list[str]:
        return sorted({d.faceset for d in self.drops} | set(self.rebuild))

    def lines(self) -> list[str]:
        out = [f"drop {d.faceset}/{d.file} ({d.faces} faces)" for d in self.drops]
        out += [f"not checked yet: {i}" for i in self.unchecked]
        out += [f"unreadable (left alone): {i}" for i in self.unreadable]
        out += [f"changed since staging (left alone; re-stage): {i}" for i in self.changed]
        return out

    def line(self) -> str:
        return (f"checked {self.checked}, to drop {len(self.drops)} in "
                f"{len({d.faceset for d in self.drops})} facesets, not checked "
                f"{len(self.unchecked)}, unreadable {len(self.unreadable)}, changed "
                f"{len(self.changed)}, already gone {len(self.gone)}")

    def counts(self) -> dict:
        return {"checked": self.checked, "unchecked": len(self.unchecked),
                "unreadable": len(self.unreadable), "changed_since_staging": len(self.changed),
                "already_gone": len(self.gone)}

    def to_json(self) -> dict:
        return audit_plan(self.run_id, self.queue, self.results, self.counts(),
                          self.facesets(), [vars(d) for d in self.drops])


def _run_id(queue_path: str, results_path: str) -> str:
    """The same queue and results give the same run: applying them twice is one run."""
    digest = hashlib.sha256()
    for path in (queue_path, results_path):
        digest.update(sha256_file(path).encode() if Path(path).is_file() else b"-")
    return digest.hexdigest()[:16]


def _recorded(out: Path, run_id: str) -> dict | None:
    top = load_manifest(out / MANIFEST_NAME, SWAP_MANIFEST)
    return next((r for r in top.get(SECTION, []) if r.get("run") == run_id), None)


def plan_audit(queue_path: str, results_path: str) -> AuditPlan:
    queue = load_queue(queue_path, KIND_MULTIFACE)
    export = queue["params"].get("export")
    if not isinstance(export, str) or not export:
        raise QueueError(f"{queue_path}: no export folder in params; re-stage the queue")
    plan = AuditPlan(export=Path(export), queue=os.path.abspath(queue_path),
                     results=os.path.abspath(results_path))
    top = load_manifest(plan.export / MANIFEST_NAME, SWAP_MANIFEST)  # still an export?
    if not Path(results_path).is_file():
        raise FileNotFoundError(f"{results_path}: no results; run work/multiface_worker.py "
                                f"{queue_path} {results_path} first")
    records, _ = read_jsonl(results_path, strict=True)
    validate_multiface_results(records, queue, str(results_path))
    plan.run_id = _run_id(queue_path, results_path)
    plan.applied = _recorded(plan.export, plan.run_id)
    results = latest_by_id(records)
    taken: set[str] = set()
    for item in queue["items"]:
        rec = results.get(item["id"])
        if rec is None:
            plan.unchecked.append(item["id"])
            continue
        if "error" in rec or not isinstance(rec.get("faces"), int) \
                or isinstance(rec.get("faces"), bool):
            plan.unreadable.append(item["id"])
            continue
        plan.checked += 1
        if rec["faces"] == 1:
            continue
        name = _faceset_name(item.get("faceset"), plan.export, queue_path)
        rel = _face_file(item.get("file"), plan.export / name, queue_path)
        png = plan.export / name / rel
        if not png.is_file():
            plan.gone.append(item["id"])
        elif sha256_file(png) != item.get("sha256"):
            plan.changed.append(item["id"])
        else:
            plan.drops.append(Drop(name, rel, rec["faces"],
                                   drop_destination(plan.export / name, rel, taken),
                                   str(item.get("key", ""))))
    # facesets a user (or an older face-sets) left with a listed face whose PNG is gone
    for entry in top.get("facesets", []):
        name = _faceset_name(entry.get("name"), plan.export)
        fs = load_manifest(plan.export / name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        if any(not safe_member_path(plan.export / name, f["file"], "faces[].file",
                                    plan.export / name / MANIFEST_NAME).is_file()
               for f in fs["faces"]):
            plan.rebuild.append(name)
    return plan


def load_pending(export: Path) -> AuditPlan | None:
    """The plan a killed apply left in ``export``, or None."""
    path = export / AUDIT_PLAN_FILE
    if not path.is_file():
        return None
    m = load_manifest(path, AUDIT_PLAN)
    counts = m["counts"]
    plan = AuditPlan(export=export, run_id=m["run_id"], queue=m["queue"], results=m["results"],
                     drops=[Drop(d["faceset"], d["file"], d["faces"], d["moved_to"],
                                 str(d.get("key", ""))) for d in m["drops"]],
                     rebuild=list(m["facesets"]), checked=int(counts.get("checked", 0)))
    for attr, key in (("unchecked", "unchecked"), ("unreadable", "unreadable"),
                      ("changed", "changed_since_staging"), ("gone", "already_gone")):
        setattr(plan, attr, [""] * int(counts.get(key, 0)))   # only the counts are kept
    return plan


def _move(fdir: Path, d: Drop) -> bool:
    """Step 2 for one PNG (a rename: it happened or it did not). True if it is moved."""
    return runs.move_once(fdir, d.file, d.moved_to, ("file", "moved_to"), strict=False)


def _apply_faceset(out: Path, name: str, drops: list[Drop], run_id: str) -> dict:
    """Steps 2-3 for one faceset; the faceset manifest after them."""

    fdir = out / name
    remove_faceset_temps(fdir)      # a write a kill interrupted
    manifest = load_manifest(fdir / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
    if any(h.get("run") == run_id for h in manifest.get("history", [])):
        return manifest
    details = {d.file: {"reason": REASON, "faces_detected": d.faces, "moved_to": d.moved_to}
               for d in drops if _move(fdir, d)}
    return rebuild_bundles(fdir, step=STEP, run=run_id, details=details, finish=with_cohesion)


def apply_audit(plan: AuditPlan, log: Callable[[str], None] = print) -> dict:
    """Write the plan, carry it out, record it (see above); returns the run's record. Finish
    an interrupted run first (``resume_audit``)."""
    if plan.applied is not None:
        return plan.applied
    remove_temp_files(plan.export, _OUT_FILES)    # a write a kill interrupted
    pending = load_pending(plan.export)
    if pending is not None:
        if pending.run_id != plan.run_id:
            raise ManifestError(f"{plan.export / AUDIT_PLAN_FILE}: the interrupted audit run "
                                f"{pending.run_id} is not finished; run apply again")
        return _execute(pending, log)
    undone = next((e for e in runs.load_top(plan.export).get("runs", [])
                   if e["id"] == plan.run_id), None)
    if undone is not None:
        raise ManifestError(f"{plan.export}: these results were applied as run {plan.run_id} "
                            f"and undone ({undone.get('undone_by')}); stage the audit again "
                            "to apply it again")
    # the run's record and the previous bytes of what it changes, for `undo`
    runs.prepare(plan.export, STEP,
                 [(f"{d.faceset}/{d.file}", f"{d.faceset}/{d.moved_to}") for d in plan.drops],
                 [MANIFEST_NAME] + [f for n in plan.facesets()
                                    for f in runs.faceset_files(plan.export, n)], {},
                 plan.facesets(), {"dropped": len(plan.drops)}, run_id=plan.run_id)
    atomic_write_json(plan.export / AUDIT_PLAN_FILE, plan.to_json())
    return _execute(plan, log)


def resume_audit(export: Path, log: Callable[[str], None] = print) -> dict | None:
    """Finish the run a killed apply left planned in ``export``; its record, or None."""
    remove_temp_files(export, _OUT_FILES)         # a write a kill interrupted
    pending = load_pending(export)
    if pending is None:
        return None
    log(f"finishing the interrupted audit run {pending.run_id} "
        f"({pending.queue}, {pending.results})")
    return _execute(pending, log)


def _execute(plan: AuditPlan, log: Callable[[str], None]) -> dict:

    out = plan.export
    by_faceset: dict[str, list[Drop]] = {name: [] for name in plan.facesets()}
    for d in plan.drops:
        by_faceset[d.faceset].append(d)
    dropped: dict[str, int] = {}
    for name, drops in sorted(by_faceset.items()):
        manifest = _apply_faceset(out, name, drops, plan.run_id)
        dropped[name] = sum(1 for e in manifest["dropped"]
                            if e.get("audit_run") == plan.run_id and e["reason"] == REASON)
        log(f"{name}: dropped {dropped[name]}, kept {len(manifest['faces'])}; bundles rebuilt")
    record = multiface_audit_record(plan.run_id, STEP, plan.queue, plan.results, plan.checked,
                                    dropped, len(plan.unreadable), len(plan.unchecked),
                                    len(plan.changed))

    run = runs.record_of(out, plan.run_id)   # None: planned by an older face-sets

    def add_record(top: dict) -> None:
        if not any(r.get("run") == plan.run_id for r in top.get(SECTION, [])):
            top.setdefault(SECTION, []).append(record)
        if run is not None:
            runs.add_entry(top, run)

    refresh_listing(out, list(by_faceset), add_record)
    (out / AUDIT_PLAN_FILE).unlink(missing_ok=True)
    fsync_dir(out)
    return _recorded(out, plan.run_id) or record
