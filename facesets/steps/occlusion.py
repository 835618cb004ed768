"""``occlusion``: take masked, sunglassed and hand-covered faces out of a swap-ready export.

roop-unleashed averages the embeddings of every face in a ``.fsz``: faces behind dark
sunglasses or a mask bias the average (and the swap), and a faceset that is mostly masked
may be about the mask rather than the person.

  stage    every face PNG of the export into an ``occlusion`` queue (with its sha256);
  score    (in-process) or ``work/clip_worker.py`` (GPU side): the queue through a scorer
           (``clip``: open_clip zero-shot; ``onnx:PATH``: a binary occlusion classifier or a
           CLIP graph of ``export-onnx``), JSON Lines results, the one job loop: resumable;
  merge    one or more results files (e.g. CLIP and a classifier) into one scores file per
           export (an attribute two scorers give: the higher probability);
  report   a static HTML contact sheet per faceset (thumbnails, scores, flags, verdict);
  apply    the rules below as one recorded run (core/runs.py): undoable.
The rules (``OcclusionRules``, defaults from core/occlusion.py; the command's flags override):
a face whose probability for any attribute is >= ``IMAGE_THRESHOLD`` is flagged; a faceset with >= ``FACESET_SHARE`` of its
faces flagged moves whole to ``_masked/``; otherwise its flagged PNGs move to
``faces/_dropped/``, and when fewer than ``MIN_SURVIVORS`` faces remain after something was
pruned the faceset moves to ``_thin/`` (a small faceset nothing was pruned from stays).
Bundles are rebuilt from what remains; the top-level manifest gains ``masked[]``,
``thin_eras[]`` and ``occlusion_filter_run``.
"""
from __future__ import annotations

import copy
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core import runs
from ..core.library import Faceset
from ..core.occlusion import FACESET_SHARE, IMAGE_THRESHOLD, MIN_SURVIVORS, verdict_of
from ..core.swapfaces import face_png_items
from ..formats.manifest import SWAP_FACESET_MANIFEST, load_manifest
from ..formats.occlusion import (DROP_REASON, MASKED_DIR, MASKED_SECTION, RUN_SECTION,
                                 THIN_DIR, THIN_SECTION, ScoresError, filter_run_record,
                                 load_scores, new_scores, plan_body, plan_path,
                                 results_queue_path, write_scores)
from ..formats.queue import (KIND_OCCLUSION, JsonlAppender, QueueError, latest_by_id,
                             load_queue, new_queue, read_jsonl, validate_occlusion_results,
                             validate_queue, write_queue)
from ..formats.swapset import MANIFEST_NAME, drop_destination, faceset_listing
from ..io.fsutil import atomic_write_json, read_json, sha256_file
from ..runtime.jobs import DEFAULT_PREFETCH_WORKERS, prefetch
from ..runtime.worker import ERROR, FAILED, OK, WorkerJob, WorkerParams, WorkItem
from ..scorers.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED

STEP = "occlusion"
WORKER_BATCH = 8           # images per inference batch of the worker's scorer


# ---- stage (WSL side) ---------------------------------------------------------------------
def stage_occlusion_queue(export_dir: str, queue_path: str) -> int:
    """Queue every face PNG of the export; returns the item count."""
    out = Path(export_dir).resolve()
    top, items = face_png_items(out)
    params = {"export": str(out), "export_run": top.get("run")}
    write_queue(queue_path, new_queue(KIND_OCCLUSION, params, items))
    return len(items)


# ---- score (in-process or work/clip_worker.py) ----------------------------------------------
def read_rgb(data: bytes) -> np.ndarray:
    """A face PNG's pixels as RGB uint8 (Pillow only: the ONNX worker has no OpenCV)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        # Pillow's own message names a memory address: results would differ run to run
        raise ValueError("not an image format Pillow knows") from None


class OcclusionJob(WorkerJob):
    name = "occlusion worker"
    unit = "png"

    def __init__(self, queue: dict, results: str, make_scorer, batch_size: int = WORKER_BATCH,
                 workers: int = DEFAULT_PREFETCH_WORKERS):
        self.queue = queue
        self.workers = int(workers)
        self.results = Path(results)
        self.make_scorer = make_scorer
        self.batch_size = int(batch_size)
        self.log: JsonlAppender | None = None
        self.scorer = None
        self.counts = {"scored": 0}

    def done_ids(self) -> set[str]:
        records, _ = read_jsonl(self.results)
        return set(latest_by_id(records))

    def start(self) -> None:
        copy_path = results_queue_path(self.results)
        if copy_path.is_file():
            prev = validate_queue(read_json(copy_path), str(copy_path), KIND_OCCLUSION)
            if prev["items"] != self.queue["items"] or prev["params"] != self.queue["params"]:
                raise QueueError(f"{self.results}: these results answer another queue "
                                 f"({copy_path}); write into a fresh results file")
        else:
            atomic_write_json(copy_path, self.queue)
        from ..scorers import ScorerError

        try:
            self.scorer = self.make_scorer()
        except ScorerError as exc:
            raise ValueError(str(exc)) from None
        self.scorer.batch_size = max(1, min(self.batch_size,
                                            self.scorer.batch_size or self.batch_size))
        self.scorer.warm_up()
        self.log = JsonlAppender(self.results)

    def _read(self, item: WorkItem):
        """(prepared pixels, None) or (None, (status, why)) for one item: read, check,
        decode and preprocess, on a prefetch thread."""
        import hashlib

        try:
            with open(item.local, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None, (FAILED, f"vanished before it could be read: {item.local}")
        except OSError as exc:
            return None, (ERROR, f"cannot read {item.local}: {exc}")
        if hashlib.sha256(data).hexdigest() != item.fields["sha256"]:
            return None, (ERROR, "changed since staging; re-stage the queue")
        try:
            return self.scorer.prepare(read_rgb(data)), None
        except (OSError, ValueError) as exc:
            return None, (ERROR, f"not a readable image ({exc})")

    def _score(self, batch: list[tuple[WorkItem, np.ndarray]]):
        scores = self.scorer.score_prepared([px for _, px in batch])
        for (item, _), s in zip(batch, scores):
            self.log.add({"id": item.id, "path": item.path, "sha256": item.fields["sha256"],
                          "scorer": self.scorer.name,
                          "scores": {k: round(float(v), 6) for k, v in s.items()}})
            self.counts["scored"] += 1
            yield item, OK, ""

    def process(self, items: Iterator[WorkItem]):
        # the next batches are read and preprocessed on threads while this one is scored
        batch: list[tuple[WorkItem, np.ndarray]] = []
        ahead = max(2 * self.scorer.batch_size, 4 * self.workers)
        for item, (pixels, problem) in prefetch(items, self._read, self.workers, ahead):
            if problem is not None:
                status, why = problem
                if status == ERROR:
                    self.log.add({"id": item.id, "path": item.path, "error": why})
                yield item, status, why
                continue
            batch.append((item, pixels))
            if len(batch) >= self.scorer.batch_size:
                yield from self._score(batch)
                batch = []
        if batch:
            yield from self._score(batch)

    def providers_note(self) -> str:
        return self.scorer.providers_note() if self.scorer is not None else ""

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()

    def extra(self) -> dict:
        return dict(self.counts)


def scorer_factory(spec: str, clip_options: dict, providers: str | None,
                   batch_size: int | None = None):
    def make():
        from ..scorers import scorer_from_spec
        return scorer_from_spec(spec, clip_options, providers, batch_size)
    return make


@dataclass(frozen=True)
class ClipOptions:
    """The clip scorer's options (`occlusion score`, `export-onnx`, work/clip_worker.py)."""
    clip_model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED   # 'none' or '': random weights
    weights: str | None = None        # a local checkpoint instead of the pretrained tag
    model_config: str | None = None   # an open_clip config JSON registered first
    prompts: str | None = None        # prompt ensembles JSON (default: the packaged one)
    threads: int | None = None        # torch CPU threads
    device: str = "cpu"
    fp16: bool = False                # autocast on a GPU

    def scorer_options(self) -> dict:
        """As ``scorers.load_scorer('clip', ...)`` takes them."""
        pretrained = None if self.pretrained in (None, "", "none") else self.pretrained
        return {"model": self.clip_model, "model_config": self.model_config,
                "pretrained": pretrained, "weights": self.weights, "prompts": self.prompts,
                "threads": self.threads, "device": self.device,
                **({"fp16": True} if self.fp16 else {})}


@dataclass(frozen=True)
class OcclusionWorkerParams(WorkerParams):
    """The occlusion worker's parameters (work/clip_worker.py, `occlusion score`): the
    scorer's batch is its own, apart from the flush window."""
    scorer: str = "clip"              # clip, or onnx:PATH
    batch_size: int = WORKER_BATCH
    clip: ClipOptions = ClipOptions()


def make_occlusion_job(queue: dict, params: OcclusionWorkerParams, mapper):
    """The worker's job (runtime.worker.main): the scorer ``params`` name, with its options."""
    job = OcclusionJob(queue, params.results,
                       scorer_factory(params.scorer, params.clip.scorer_options(),
                                      params.providers, params.batch_size),
                       params.batch_size, params.workers)
    results = Path(params.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    return (job, Path(str(results) + ".lock"),
            results.with_name(results.name + ".failures.jsonl"))


# ---- merge --------------------------------------------------------------------------------
def merge_results(results_paths: list[str], scores_path: str) -> dict:
    """Every results file (each with its queue copy) into one scores document; all must
    answer a queue of the same export. Writes and returns it."""
    if not results_paths:
        raise ValueError("no results files to merge")
    export = export_run = queue_path = None
    items: dict[str, dict] = {}
    scored: dict[str, dict] = {}
    errors: dict[str, str] = {}
    scorers: list[str] = []
    for rp in results_paths:
        if not Path(rp).is_file():
            raise FileNotFoundError(f"{rp}: no such results file; run occlusion score or "
                                    "work/clip_worker.py first")
        qp = results_queue_path(rp)
        queue = load_queue(qp, KIND_OCCLUSION)
        if export is None:
            export, export_run, queue_path = queue["params"]["export"], \
                queue["params"].get("export_run"), str(qp)
        elif queue["params"]["export"] != export:
            raise ScoresError(f"{qp}: staged from {queue['params']['export']}, not {export} "
                              "like the other results; merge one export at a time")
        records, _ = read_jsonl(rp, strict=True)
        validate_occlusion_results(records, queue, str(rp))
        for it in queue["items"]:
            items.setdefault(it["id"], it)
        for rid, rec in latest_by_id(records).items():
            if "error" in rec:
                errors.setdefault(rid, rec["error"])
                continue
            scorers.append(rec["scorer"])
            mine = scored.setdefault(rid, {})
            for k, v in rec["scores"].items():
                mine[k] = max(float(v), mine.get(k, 0.0))
    facesets: dict[str, list[dict]] = {}
    for rid, s in scored.items():
        it = items[rid]
        facesets.setdefault(it["faceset"], []).append(
            {"file": it["file"], "key": it.get("key", ""), "sha256": it["sha256"],
             "scores": s})
    doc = new_scores(export, export_run, queue_path,
                     [os.path.abspath(p) for p in results_paths], scorers, facesets,
                     [i for i in items if i not in scored and i not in errors],
                     [{"id": i, "error": e} for i, e in sorted(errors.items())
                      if i not in scored])
    write_scores(scores_path, doc)
    return doc


# ---- the plan: verdict per faceset --------------------------------------------------------
@dataclass
class FacesetVerdict:
    name: str
    faces: int                       # faces in the faceset (its manifest)
    scored: int
    flagged: list[str] = field(default_factory=list)     # faces/NNN.png, rank order
    scores: dict[str, dict] = field(default_factory=dict)   # file -> {attribute: p}
    changed: list[str] = field(default_factory=list)     # PNG differs from the scored one
    verdict: str = "keep"

    @property
    def share(self) -> float:
        return len(self.flagged) / self.faces if self.faces else 0.0

    def to_json(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "faces": self.faces,
                "scored": self.scored, "flagged": len(self.flagged),
                "share": round(self.share, 4),
                "prune": self.flagged if self.verdict in ("prune", "thin") else [],
                "survivors": self.faces - (len(self.flagged) if self.verdict in
                                           ("prune", "thin") else 0),
                "changed_since_scoring": self.changed}


@dataclass
class FilterPlan:
    root: Path
    scores_path: str
    thresholds: dict
    scorers: list[str]
    facesets: list[FacesetVerdict] = field(default_factory=list)
    not_in_export: list[str] = field(default_factory=list)   # scored, no longer listed
    # the run that applied these scores with these thresholds, still in effect: a re-run
    # (after a kill, or twice) changes nothing and keeps that run's plan file
    applied: str | None = None

    def by(self, verdict: str) -> list[FacesetVerdict]:
        return [f for f in self.facesets if f.verdict == verdict]

    def lines(self) -> list[str]:
        if self.applied:
            return [f"these scores were applied with these thresholds as run {self.applied} "
                    f"(still in effect; `library undo {self.root} {self.applied}` to apply "
                    f"them again); its plan "
                    f"{plan_path(self.scores_path)} is kept"]
        out = []
        for f in self.facesets:
            if f.verdict == "keep":
                continue
            what = {"prune": f"prune {len(f.flagged)} of {f.faces}",
                    "masked": f"quarantine to {MASKED_DIR}/ ({len(f.flagged)} of {f.faces} "
                              f"flagged, {f.share:.0%})",
                    "thin": f"prune {len(f.flagged)}, then to {THIN_DIR}/ ("
                            f"{f.faces - len(f.flagged)} left)"}[f.verdict]
            out.append(f"{f.name}: {what}")
        return out

    def line(self) -> str:
        if self.applied:
            return f"applied already as run {self.applied}"
        pruned = sum(len(f.flagged) for f in self.facesets if f.verdict in ("prune", "thin"))
        return (f"{len(self.facesets)} facesets: {len(self.by('prune'))} pruned, "
                f"{len(self.by('masked'))} to {MASKED_DIR}/, {len(self.by('thin'))} to "
                f"{THIN_DIR}/ (after pruning), {len(self.by('keep'))} untouched; {pruned} face "
                "PNGs to faces/_dropped/")

    def to_json(self, dry_run: bool) -> dict:
        return plan_body(self.scores_path, str(self.root), self.thresholds,
                         [f.to_json() for f in self.facesets], dry_run)


@dataclass(frozen=True)
class OcclusionRules:
    """The rules of `occlusion report` and `apply` (module docstring); their defaults are
    core/occlusion.py's, which export-swap's --max-occlusion shares."""
    image_threshold: float = IMAGE_THRESHOLD
    faceset_share: float = FACESET_SHARE
    min_survivors: int = MIN_SURVIVORS


def plan_filter(scores_path: str, rules: OcclusionRules = OcclusionRules()) -> FilterPlan:
    image_threshold, faceset_share, min_survivors = (rules.image_threshold, rules.faceset_share,
                                                     rules.min_survivors)
    for name, v, lo, hi in (("image threshold", image_threshold, 0, 1),
                            ("faceset share", faceset_share, 0, 1)):
        if not lo < v <= hi:
            raise ValueError(f"{name} {v} is not in (0, 1]")
    if min_survivors < 0:
        raise ValueError(f"min survivors {min_survivors} is negative")
    doc = load_scores(scores_path)
    root = Path(doc["export"])
    top = runs.load_top(root)        # still an export? (names the file when it is not)
    plan = FilterPlan(root, os.path.abspath(scores_path),
                      {"image": image_threshold, "faceset_share": faceset_share,
                       "min_survivors": min_survivors}, doc["scorers"])
    plan.applied = _applied_run(top, plan)
    if plan.applied:
        return plan
    listed = {e["name"] for e in top.get("facesets", [])}
    plan.not_in_export = sorted(set(doc["facesets"]) - listed)
    for entry in top.get("facesets", []):
        name = entry["name"]
        m = load_manifest(root / name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        scores = {f["file"]: f for f in doc["facesets"].get(name, [])}
        faces = sorted(m["faces"], key=lambda f: f["rank"])
        v = FacesetVerdict(name, len(faces), 0)
        for face in faces:
            s = scores.get(face["file"])
            png = root / name / face["file"]
            if s is None or not png.is_file():
                continue
            if sha256_file(png) != s["sha256"]:
                v.changed.append(face["file"])
                continue
            v.scored += 1
            v.scores[face["file"]] = s["scores"]
            if max(s["scores"].values()) >= image_threshold:
                v.flagged.append(face["file"])
        v.verdict = verdict_of(v.faces, len(v.flagged), faceset_share, min_survivors)
        plan.facesets.append(v)
    return plan


def _applied_run(top: dict, plan: FilterPlan) -> str | None:
    """The run of the top manifest's last filter record when it applied these very scores
    with these thresholds and is not undone (None otherwise)."""
    last = top.get(RUN_SECTION)
    if not isinstance(last, dict) or last.get("scores") != plan.scores_path \
            or last.get("thresholds") != plan.thresholds:
        return None
    entry = next((e for e in top.get("runs", []) if e.get("id") == last.get("run")), None)
    return entry["id"] if entry is not None and not entry.get("undone_by") else None


def write_plan(plan: FilterPlan, dry_run: bool) -> Path:
    """SCORES.plan.json; kept as it is when the plan was applied already (it is that run's
    plan: a re-run after a kill must not overwrite it with an empty one)."""
    path = plan_path(plan.scores_path)
    if plan.applied and path.is_file():
        return path
    atomic_write_json(path, plan.to_json(dry_run))
    return path


# ---- apply: one recorded run ----------------------------------------------------------------
def _pruned_manifest(m: dict, v: FacesetVerdict, dests: dict[str, str], when: str,
                     quarantine: dict | None) -> dict:
    new = Faceset.of(m).dropping(dests, DROP_REASON, runs.THIS_RUN,
                                 {f: {"occlusion": v.scores[f]} for f in dests})
    hist = {"step": STEP, "when": when, "run": runs.THIS_RUN, "verdict": v.verdict,
            "removed": [f["key"] for f in m["faces"] if f["file"] in dests],
            "kept": len(new["faces"])}
    if quarantine:
        new["quarantined"] = quarantine
        hist["moved_to"] = quarantine["moved_to"]
    new.setdefault("history", []).append(hist)
    return new


def apply_filter(plan: FilterPlan, log=print) -> dict | None:
    """Carry out the plan as one recorded run; its ``runs[]`` entry (None: nothing to do).
    Call under the folder's lock, after ``runs.finish_pending``."""
    root = plan.root
    todo = [v for v in plan.facesets if v.verdict != "keep"]
    if not todo or plan.applied:
        return None
    top = runs.load_top(root)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    moves, after, changed, rebuild = [], {}, [], []
    masked, thin = [], []
    taken: set[str] = set()
    for v in todo:
        fdir = root / v.name
        m = load_manifest(fdir / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        changed += runs.faceset_files(root, v.name)
        if v.verdict == "masked":
            dest = runs.free_name(root, f"{MASKED_DIR}/{v.name}")
            moves.append((v.name, dest))
            q = {"to": MASKED_DIR, "moved_to": dest, "run": runs.THIS_RUN,
                 "flagged": len(v.flagged), "faces": v.faces, "share": round(v.share, 4)}
            after[f"{dest}/{MANIFEST_NAME}"] = _pruned_manifest(m, v, {}, when, q)
            masked.append(dict(q, name=v.name, flagged_files=v.flagged))
            continue
        dests = {f: drop_destination(fdir, f, taken) for f in v.flagged}
        if v.verdict == "thin":
            dest = runs.free_name(root, f"{THIN_DIR}/{v.name}")
            moves.append((v.name, dest))           # the folder first, then its PNGs
            base = dest
            q = {"to": THIN_DIR, "moved_to": dest, "run": runs.THIS_RUN,
                 "pruned": len(v.flagged), "survivors": v.faces - len(v.flagged)}
            thin.append(dict(q, name=v.name))
        else:
            base, q = v.name, None
        moves += [(f"{base}/{f}", f"{base}/{d}") for f, d in dests.items()]
        after[f"{base}/{MANIFEST_NAME}"] = _pruned_manifest(m, v, dests, when, q)
        rebuild.append(base)
    gone = {v.name for v in todo if v.verdict in ("masked", "thin")}
    new_top = copy.deepcopy(top)
    listing = {v.name: faceset_listing(after[f"{v.name}/{MANIFEST_NAME}"])
               for v in todo if v.verdict == "prune"}
    new_top["facesets"] = [listing.get(e["name"], e) for e in top["facesets"]
                           if e["name"] not in gone]
    if isinstance(new_top.get("summary"), dict):
        new_top["summary"]["facesets"] = len(new_top["facesets"])
    new_top.setdefault(MASKED_SECTION, []).extend(masked)
    new_top.setdefault(THIN_SECTION, []).extend(thin)
    counts = {"facesets": len(plan.facesets), "pruned": len(plan.by("prune")),
              "pruned_pngs": sum(len(v.flagged) for v in todo if v.verdict != "masked"),
              "masked": len(masked), "thin": len(thin), "kept": len(plan.by("keep"))}
    new_top[RUN_SECTION] = filter_run_record(runs.THIS_RUN, plan.scores_path, plan.thresholds,
                                             counts, plan.scorers)
    after[MANIFEST_NAME] = new_top
    changed.append(MANIFEST_NAME)
    run_id = runs.start(root, STEP, moves, changed, after, rebuild, counts)
    return runs.execute(root, run_id, log)


# ---- report: static HTML, no network ------------------------------------------------------
THUMB = 160                     # px, the thumbnails' longer side
_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;background:#f4f4f4;color:#222}
h1{font-size:20px;margin:0 0 4px} .sub{color:#555;margin-bottom:12px}
table{border-collapse:collapse;background:#fff} td,th{padding:4px 10px;border:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:3px solid #8c8;border-radius:6px;padding:6px;width:172px}
.card.flagged{border-color:#d22;background:#fee}
.card img{width:160px;height:160px;object-fit:cover;display:block}
.name{font-size:12px;font-weight:600;margin:4px 0 2px}
.row{font-size:12px;display:flex;align-items:center;gap:4px}
.bar{flex:1;height:7px;background:#eee;border-radius:3px;overflow:hidden}
.bar i{display:block;height:100%;background:#48a}
.row.hot .bar i{background:#d22} .flag{color:#d22;font-weight:700;font-size:12px}
.v-keep{color:#282} .v-prune{color:#a60} .v-masked,.v-thin{color:#d22}
"""


def _page(title: str, body: str) -> bytes:
    import html

    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)}</title><style>{_CSS}</style></head><body>\n{body}\n"
            "</body></html>\n").encode("utf-8")


def _thumb(src: Path, dest: Path) -> None:
    from PIL import Image

    from ..io.fsutil import atomic_write_bytes

    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    atomic_write_bytes(dest, buf.getvalue())


def _verdict_text(v: FacesetVerdict) -> str:
    return {"keep": "keep (nothing flagged)",
            "prune": f"prune {len(v.flagged)} flagged face(s)",
            "masked": f"quarantine to {MASKED_DIR}/ ({v.share:.0%} flagged)",
            "thin": f"prune {len(v.flagged)}, then {THIN_DIR}/ "
                    f"({v.faces - len(v.flagged)} left)"}[v.verdict]


def write_report(plan: FilterPlan, report_dir: str, progress: bool = True) -> Path:
    """REPORT_DIR/index.html (one row per faceset) and REPORT_DIR/faceset_NNN.html (every
    face's thumbnail with its scores; flagged faces red; the verdict apply would give);
    thumbnails in REPORT_DIR/thumbs/. Opens from disk: no script, no network."""
    import html

    from ..runtime.progress import progress_bar

    from ..io.fsutil import atomic_write_bytes

    out = Path(report_dir)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    thr = plan.thresholds["image"]
    rows = []
    total = sum(len(v.scores) for v in plan.facesets)
    bar = progress_bar(total=total, desc="report thumbnails", unit="png", disable=not progress)
    for v in plan.facesets:
        cards = []
        m = load_manifest(plan.root / v.name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        for face in sorted(m["faces"], key=lambda f: f["rank"]):
            f = face["file"]
            scores = v.scores.get(f)
            thumb = f"thumbs/{v.name}/{Path(f).stem}.jpg"
            if scores is not None:
                _thumb(plan.root / v.name / f, out / thumb)
                bar.update(1)
            flagged = f in v.flagged
            lines = "".join(
                f'<div class="row{" hot" if p >= thr else ""}"><span>{html.escape(a)}</span>'
                f'<span class="bar"><i style="width:{p * 100:.0f}%"></i></span>'
                f"<b>{p:.2f}</b></div>" for a, p in sorted((scores or {}).items()))
            img = f'<img src="{html.escape(thumb)}" alt="{html.escape(f)}">' if scores \
                else "<div>not scored</div>"
            cards.append(f'<div class="card{" flagged" if flagged else ""}">{img}'
                         f'<div class="name">#{face["rank"]} {html.escape(f)}'
                         f'{" <span class=flag>FLAGGED</span>" if flagged else ""}</div>'
                         f"{lines}</div>")
        head = (f"<h1>{html.escape(v.name)}: <span class=\"v-{v.verdict}\">"
                f"{html.escape(_verdict_text(v))}</span></h1><div class=\"sub\">"
                f"{v.faces} faces, {v.scored} scored, {len(v.flagged)} flagged "
                f"({v.share:.0%}); a face is flagged at p &ge; {thr}, a faceset quarantined "
                f"at {plan.thresholds['faceset_share']:.0%} flagged. "
                f'<a href="index.html">all facesets</a></div>')
        atomic_write_bytes(out / f"{v.name}.html",
                           _page(f"{v.name} occlusion", head + '<div class="grid">'
                                 + "".join(cards) + "</div>"))
        rows.append(f'<tr><td><a href="{v.name}.html">{v.name}</a></td>'
                    f'<td class="v-{v.verdict}">{html.escape(_verdict_text(v))}</td>'
                    f"<td>{v.faces}</td><td>{v.scored}</td><td>{len(v.flagged)}</td>"
                    f"<td>{v.share:.0%}</td></tr>")
    bar.close()
    index = (f"<h1>Occlusion report</h1><div class=\"sub\">{html.escape(str(plan.root))}"
             f"<br>scores {html.escape(plan.scores_path)} ({html.escape(', '.join(plan.scorers))})"
             f"<br>{html.escape(plan.line())}</div><table><tr><th>faceset</th><th>verdict"
             "</th><th>faces</th><th>scored</th><th>flagged</th><th>share</th></tr>"
             + "".join(rows) + "</table>")
    atomic_write_bytes(out / "index.html", _page("occlusion report", index))
    return out / "index.html"


# ---- export-onnx's check ----------------------------------------------------------------
def check_images(n: int = 8, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Synthetic face-sized crops (smooth colour fields plus noise) for an export check."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = np.stack([np.sin(xx * rng.uniform(1, 9) + rng.uniform(0, 6)) for _ in range(3)]
                        + [], axis=-1) * 80 + 128 + yy[..., None] * rng.uniform(-40, 40)
        out.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return out


def compare_scorers(a, b, images: list[np.ndarray], repeat: int = 1) -> dict:
    """Both scorers over the same crops: max abs difference per attribute and img/s each."""
    def timed(s):
        best, scores = None, None
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            scores = s.score_all(images)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        return scores, len(images) / best if best else float("inf")

    sa, ra = timed(a)
    sb, rb = timed(b)
    diff = max(abs(x[k] - y[k]) for x, y in zip(sa, sb) for k in x)
    return {"max_abs_diff": diff, "a_img_s": ra, "b_img_s": rb, "images": len(images)}
