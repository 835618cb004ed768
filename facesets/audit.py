"""``audit-multiface``: re-check that every exported face PNG shows exactly one face.

The load-bearing invariant of ``.fsz`` bundles: the consumer re-detects every PNG and averages
all faces it finds, so a second face (or none) pollutes the face set.
  stage   queue every face PNG of an export-swap OUT (id = "faceset_NNN/faces/NNN.png", with
          the PNG's sha256 so a result never applies to a file that changed since);
  worker  (work/multiface_worker.py) detection only, one JSON Lines record per PNG:
          {id, path, faces, scores} or {id, path, error};
  apply   move PNGs whose count is not 1 into <faceset>/faces/_dropped/ (reversible), rebuild
          that faceset's bundles (export.rebuild_bundles), record provenance in both
          manifests. ``dry_run`` prints the plan and changes nothing.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .fsutil import reversible_move, sha256_file
from .imageio import ImageError, decode, read_header
from .manifest import (SWAP_FACESET_MANIFEST, SWAP_MANIFEST, ManifestError, load_manifest,
                       write_manifest)
from .queue import (KIND_MULTIFACE, JsonlAppender, QueueError, latest_by_id, load_queue,
                    new_queue, read_jsonl, validate_multiface_results, write_queue)
from .worker import ERROR, FAILED, OK, WorkerJob, WorkItem, map_param_path

MANIFEST_NAME = "manifest.json"
FACES_DIR = "faces"
DROPPED_DIR = "_dropped"
STEP = "audit-multiface"
REASON = "multiface_audit"           # dropped[] reason: the PNG did not show exactly one face
SECTION = "multiface_audit"          # provenance list in the top-level manifest


# ---- stage (WSL side) -------------------------------------------------------------------
def stage_multiface_queue(export_dir: str, queue_path: str, model: str | None,
                          model_root: str | None, det_size: int) -> int:
    """Queue every face PNG the export's faceset manifests list. Returns the item count."""
    out = Path(export_dir).resolve()
    top = load_manifest(out / MANIFEST_NAME, SWAP_MANIFEST)
    items = []
    for entry in top.get("facesets", []):
        name = _faceset_name(entry.get("name"), out)
        fs = load_manifest(out / name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        for face in fs.get("faces", []):
            rel = _face_file(face.get("file"), out / name)
            png = out / name / rel
            if not png.is_file():
                continue  # already moved away: rebuild_bundles handles it on apply
            items.append({"id": f"{name}/{rel}", "path": str(png), "faceset": name,
                          "file": rel, "key": face.get("key", ""),
                          "size": png.stat().st_size, "sha256": sha256_file(png)})
    params = {"model": model or top.get("model") or "buffalo_l",
              "model_root": os.path.abspath(os.path.expanduser(model_root)) if model_root
              else None,
              "det_size": int(det_size), "export": str(out), "export_run": top.get("run")}
    write_queue(queue_path, new_queue(KIND_MULTIFACE, params, items))
    return len(items)


def _faceset_name(name, out: Path) -> str:
    """A faceset folder named by a manifest or queue: a plain child of OUT, never a path."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\\" in name or not (out / name).is_dir():
        raise ManifestError(f"{out}: faceset {name!r} is not a folder of this export; "
                            "re-run export-swap or re-stage the audit")
    return name


def _face_file(rel, faceset_dir: Path) -> str:
    """A face PNG named by a manifest or queue: faces/<name>.png inside that faceset."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if len(parts) != 2 or parts[0] != FACES_DIR or parts[1] in ("", ".", "..") \
            or "\\" in parts[1] or not parts[1].lower().endswith(".png"):
        raise ManifestError(f"{faceset_dir}: face file {rel!r} is not faces/<name>.png; "
                            "re-run export-swap or re-stage the audit")
    return rel


# ---- worker (GPU side) ------------------------------------------------------------------
class MultifaceJob(WorkerJob):
    name = "multiface worker"
    unit = "png"

    def __init__(self, queue: dict, results: str, mapper, providers: str | None = None,
                 model_root: str | None = None):
        self.params = queue["params"]
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
        from .backends import load_backend

        model = self.params.get("model")
        if not isinstance(model, str) or not model:
            raise QueueError("multiface queue has no model parameter; re-stage the queue")
        self.backend = load_backend(map_param_path(model, self.mapper), self.model_root,
                                    self.providers, int(self.params.get("det_size", 640)),
                                    with_recognition=False)
        self.log = JsonlAppender(self.results)

    def process(self, items: Iterator[WorkItem]):
        for item in items:
            try:
                with open(item.local, "rb") as fh:
                    data = fh.read()
                read_header(data)
                image = decode(data, 1)
            except FileNotFoundError:
                yield item, FAILED, f"vanished before it could be read: {item.local}"
                continue
            except (ImageError, OSError) as exc:
                self.log.add({"id": item.id, "path": item.path, "error": str(exc)})
                yield item, ERROR, str(exc)
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


def make_multiface_job(queue: dict, args, mapper):
    job = MultifaceJob(queue, args.results, mapper, args.providers, args.model_root)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    return (job, Path(str(results) + ".lock"),
            results.with_name(results.stem + ".failures.jsonl"))


# ---- apply (WSL side) -------------------------------------------------------------------
@dataclass
class Drop:
    faceset: str
    file: str          # faces/NNN.png
    faces: int         # faces the worker found


@dataclass
class AuditPlan:
    export: Path
    drops: list[Drop] = field(default_factory=list)
    checked: int = 0
    unchecked: list[str] = field(default_factory=list)    # no result yet
    unreadable: list[str] = field(default_factory=list)   # the worker could not read it
    changed: list[str] = field(default_factory=list)      # file changed since staging
    gone: list[str] = field(default_factory=list)         # already moved away

    def facesets(self) -> list[str]:
        return sorted({d.faceset for d in self.drops})

    def lines(self) -> list[str]:
        out = [f"drop {d.faceset}/{d.file} ({d.faces} faces)" for d in self.drops]
        out += [f"not checked yet: {i}" for i in self.unchecked]
        out += [f"unreadable (left alone): {i}" for i in self.unreadable]
        out += [f"changed since staging (left alone; re-stage): {i}" for i in self.changed]
        return out

    def line(self) -> str:
        return (f"checked {self.checked}, to drop {len(self.drops)} in "
                f"{len(self.facesets())} facesets, not checked {len(self.unchecked)}, "
                f"unreadable {len(self.unreadable)}, changed {len(self.changed)}, "
                f"already gone {len(self.gone)}")


def plan_audit(queue_path: str, results_path: str) -> AuditPlan:
    queue = load_queue(queue_path, KIND_MULTIFACE)
    export = queue["params"].get("export")
    if not isinstance(export, str) or not export:
        raise QueueError(f"{queue_path}: no export folder in params; re-stage the queue")
    plan = AuditPlan(export=Path(export))
    load_manifest(plan.export / MANIFEST_NAME, SWAP_MANIFEST)  # still an export?
    if not Path(results_path).is_file():
        raise FileNotFoundError(f"{results_path}: no results; run work/multiface_worker.py "
                                f"{queue_path} {results_path} first")
    records, _ = read_jsonl(results_path, strict=True)
    validate_multiface_results(records, queue, str(results_path))
    results = latest_by_id(records)
    for item in queue["items"]:
        rec = results.get(item["id"])
        if rec is None:
            plan.unchecked.append(item["id"])
            continue
        if "error" in rec or not isinstance(rec.get("faces"), int):
            plan.unreadable.append(item["id"])
            continue
        plan.checked += 1
        if rec["faces"] == 1:
            continue
        name = _faceset_name(item.get("faceset"), plan.export)
        rel = _face_file(item.get("file"), plan.export / name)
        png = plan.export / name / rel
        if not png.is_file():
            plan.gone.append(item["id"])
        elif sha256_file(png) != item.get("sha256"):
            plan.changed.append(item["id"])
        else:
            plan.drops.append(Drop(name, rel, rec["faces"]))
    return plan


def _annotate(manifest: dict, drops: dict[str, Drop], moved: dict[str, str]) -> None:
    """Add what the audit found to this step's dropped[] entries."""
    for e in manifest.get("dropped", []):
        d = drops.get(e.get("file"))
        if e.get("reason") == REASON and d is not None and "faces_detected" not in e:
            e["faces_detected"] = d.faces
            if e["file"] in moved:
                e["moved_to"] = moved[e["file"]]


def apply_audit(plan: AuditPlan, queue_path: str, results_path: str,
                log: Callable[[str], None] = print) -> dict[str, int]:
    """Move, rebuild, record. Re-running after a crash finishes the job (a faceset whose
    PNGs were moved but whose bundles were not rebuilt is rebuilt then)."""
    from .export import rebuild_bundles, refresh_listing

    out = plan.export
    by_faceset: dict[str, dict[str, Drop]] = {}
    for d in plan.drops:
        by_faceset.setdefault(d.faceset, {})[d.file] = d
    # facesets a killed earlier apply left half-done: a listed face whose PNG is gone
    top = load_manifest(out / MANIFEST_NAME, SWAP_MANIFEST)
    for entry in top.get("facesets", []):
        name = _faceset_name(entry.get("name"), out)
        fs = load_manifest(out / name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        if any(not (out / name / f["file"]).is_file() for f in fs.get("faces", [])):
            by_faceset.setdefault(name, {})
    dropped: dict[str, int] = {}
    for name, drops in sorted(by_faceset.items()):
        fdir = out / name
        moved = {}
        for rel in sorted(drops):
            dest = reversible_move(fdir / rel, fdir / FACES_DIR / DROPPED_DIR)
            moved[rel] = dest.relative_to(fdir).as_posix()
        before = len(load_manifest(fdir / MANIFEST_NAME, SWAP_FACESET_MANIFEST)["faces"])
        manifest = rebuild_bundles(fdir, reason=REASON, step=STEP)
        _annotate(manifest, drops, moved)
        write_manifest(fdir / MANIFEST_NAME, manifest)
        refresh_listing(out, name)
        dropped[name] = before - len(manifest["faces"])
        log(f"{name}: dropped {dropped[name]}, kept {len(manifest['faces'])}; bundles rebuilt")
    top = load_manifest(out / MANIFEST_NAME, SWAP_MANIFEST)
    top.setdefault(SECTION, []).append({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": STEP,
        "why": "face PNG did not show exactly one face on re-detection (0 or 2+); moved to "
               "<faceset>/faces/_dropped/",
        "queue": os.path.abspath(queue_path), "results": os.path.abspath(results_path),
        "checked": plan.checked, "dropped": sum(dropped.values()), "by_faceset": dropped,
        "unreadable": len(plan.unreadable), "unchecked": len(plan.unchecked),
        "changed_since_staging": len(plan.changed)})
    write_manifest(out / MANIFEST_NAME, top)
    return dropped
