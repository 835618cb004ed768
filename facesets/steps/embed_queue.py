"""``embed`` through a queue: stage (WSL), the worker job (GPU side), merge (WSL).

  stage   list + hash against the cache (scan.plan_embed, as in-process embed does), record
          the paths that need no model (aliases of known content, unhashable files) in the
          cache at once, and queue one item per new content: {id = sha256, path, size,
          mtime_ns, aliases: [{path, size, mtime_ns}]}.
  worker  analyse each item exactly as in-process embed does (facesets.steps.embed.iter_analyzed)
          and record it with the same function (record_result) into cache segments under
          ``OUT/results.npz.segments/``, carrying the queue's WSL paths.
  merge   import those rows into the cache under its lock, refusing another model.
The merged cache therefore holds the same records in-process ``embed`` writes.
"""
from __future__ import annotations

import os
import posixpath
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.analyze import (DECODE_WORKERS, iter_analyzed, job_status, record_plan_paths,
                             record_result)
from ..formats.cache import (CacheError, FaceCache, SegmentWriter, cache_exists, cache_lock,
                             check_model, compact_cache, load_cache, table_len)
from ..formats.queue import (FAILURES_LOG, KIND_EMBED, QUEUE_COPY, RESULTS_CACHE, QueueError,
                             load_queue, new_queue, validate_embed_results, write_queue)
from ..io.fsutil import atomic_write_json
from ..io.imageio import DEFAULT_MAX_PIXELS
from ..runtime.worker import WorkerJob, WorkerParams, WorkItem, map_param_path
from ..sources.folder import FolderSource, Listed, plan_embed

# what the worker's backend says about its model (copied into the cache's meta on merge)
MODEL_META = ("model", "model_id", "embedding_dim", "det_size", "has_landmarks")


def _sources_with(meta: dict, src: str) -> list[str]:
    sources = list(meta.get("sources", []))
    if os.path.abspath(src) not in sources:
        sources.append(os.path.abspath(src))
    return sources


# ---- stage (WSL side) -------------------------------------------------------------------
@dataclass
class StageSummary:
    seen: int = 0
    unchanged: int = 0
    queued: int = 0
    aliased: int = 0
    unreadable: int = 0

    def line(self) -> str:
        return (f"files seen {self.seen}, unchanged {self.unchanged}, queued {self.queued}, "
                f"aliased {self.aliased}, unreadable {self.unreadable}")


def stage_embed_queue(src: str, cache_path: str, queue_path: str, model: str,
                      model_root: str | None, det_size: int,
                      max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True) -> StageSummary:
    """Write the queue of the photos under ``src`` that ``cache_path`` still lacks."""
    summary = StageSummary()
    with cache_lock(cache_path):
        cache = load_cache(cache_path, must_exist=False)
        check_model(cache, model, cache_path=cache_path)
        plan = plan_embed(FolderSource(src).list_ids(), cache, progress=progress)
        summary.seen, summary.unchanged = plan.listed, plan.unchanged
        summary.queued, summary.unreadable = len(plan.to_embed), len(plan.unreadable)
        summary.aliased = len(plan.aliases) + sum(len(v) for v in plan.pending_aliases.values())
        if plan.to_embed or plan.aliases or plan.unreadable:
            meta = dict(cache.meta)
            meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            writer = SegmentWriter(cache_path, meta)
            record_plan_paths(writer, plan)
            writer.flush(meta_update={"sources": _sources_with(meta, src)})
            compact_cache(cache_path)
    items = [{"id": it.sha256, "path": it.path, "sha256": it.sha256, "size": it.size,
              "mtime_ns": it.mtime_ns,
              "aliases": [{"path": a.path, "size": a.size, "mtime_ns": a.mtime_ns}
                          for a in plan.pending_aliases.get(it.sha256, [])]}
             for it in plan.to_embed]
    params = {"model": model,
              "model_root": os.path.abspath(os.path.expanduser(model_root)) if model_root
              else None,
              "model_id": cache.meta.get("model_id"), "det_size": int(det_size),
              "max_pixels": int(max_pixels), "src": os.path.abspath(src),
              "cache": os.path.abspath(cache_path)}
    write_queue(queue_path, new_queue(KIND_EMBED, params, items))
    return summary


# ---- worker (GPU side) ------------------------------------------------------------------
def queued_photo(item: WorkItem) -> tuple[Listed, list[Listed]]:
    """The queue item (checked by queue.validate_queue) as the cache records it: the photo
    and its aliases (WSL paths)."""
    f = item.fields
    return (Listed(f["path"], f["size"], f["mtime_ns"], f["sha256"]),
            [Listed(a["path"], a["size"], a["mtime_ns"], f["sha256"])
             for a in f.get("aliases", [])])


class EmbedJob(WorkerJob):
    name = "embed worker"
    unit = "img"

    def __init__(self, queue: dict, out: str, mapper, providers: str | None = None,
                 model_root: str | None = None, workers: int = DECODE_WORKERS):
        self.params = queue["params"]
        self.queue_created = queue.get("created")
        self.out = Path(out)
        self.results = self.out / RESULTS_CACHE
        self.mapper = mapper
        self.providers = providers
        self.model_root = model_root or map_param_path(self.params.get("model_root"), mapper)
        self.workers = workers
        self.writer: SegmentWriter | None = None
        self.faces = 0

    def done_ids(self) -> set[str]:
        if not cache_exists(self.results):
            return set()
        return set(_load_results(self.results).files["sha256"].tolist())

    def start(self) -> None:
        from ..backends import load_backend

        model = self.params.get("model")
        if not isinstance(model, str) or not model:
            raise QueueError("embed queue has no model parameter; re-stage the queue")
        self.backend = load_backend(map_param_path(model, self.mapper), self.model_root,
                                    self.providers, int(self.params.get("det_size", 640)))
        want = self.params.get("model_id")
        if want and want != self.backend.model_id:
            raise CacheError(f"the queue's cache was made with {want}, but this worker's "
                             f"'{model}' pack is {self.backend.model_id}; point --model-root "
                             "at the same pack")
        if cache_exists(self.results):
            check_model(load_cache(self.results), self.backend.name, self.backend.model_id,
                        str(self.results))
        meta = dict(self.backend.describe(), queue_created=self.queue_created,
                    providers=",".join(self.backend.providers))
        self.writer = SegmentWriter(self.results, meta)

    def process(self, items: Iterator[WorkItem]):
        fed: deque[WorkItem] = deque()

        def feed():
            for it in items:
                photo, _ = queued_photo(it)
                fed.append(it)
                yield Listed(it.local, photo.size, photo.mtime_ns, photo.sha256)

        max_pixels = int(self.params.get("max_pixels", DEFAULT_MAX_PIXELS))
        for result in iter_analyzed(self.backend, feed(), self.workers, max_pixels):
            item = fed.popleft()
            photo, aliases = queued_photo(item)
            result.path = item.path  # results carry the queue's own paths
            record_result(self.writer, result, photo, aliases)
            self.faces += len(result.faces)
            status = job_status(result)
            yield item, status, result.error

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def extra(self) -> dict:
        return {"faces": self.faces}


def keep_queue_copy(out: Path, queue: dict) -> None:
    """Keep the queue beside its results (OUT/queue.json): merge checks every result row
    against it. A results folder answers one queue only."""
    copy = out / QUEUE_COPY
    if copy.is_file():
        held = load_queue(copy, KIND_EMBED)
        if held["params"] != queue["params"] or held["items"] != queue["items"]:
            raise QueueError(f"{out}: holds the results of another queue ({copy}); give "
                             "this queue an empty results folder")
        return
    atomic_write_json(copy, queue)


@dataclass(frozen=True)
class EmbedWorkerParams(WorkerParams):
    """work/embed_worker.py's parameters: OUT is a results folder."""
    # decode threads, as in-process embed (on a GPU the model waits on decoding)
    workers: int = DECODE_WORKERS


def make_embed_job(queue: dict, params: EmbedWorkerParams, mapper):
    job = EmbedJob(queue, params.results, mapper, params.providers, params.model_root,
                   params.workers)
    out = Path(params.results)
    out.mkdir(parents=True, exist_ok=True)
    keep_queue_copy(out, queue)
    return job, out / ".worker.lock", out / FAILURES_LOG


# ---- merge (WSL side) -------------------------------------------------------------------
@dataclass
class MergeSummary:
    files: int = 0
    faces: int = 0
    paths: int = 0
    errors: int = 0
    pending_failures: int = 0

    def line(self) -> str:
        return (f"merged {self.files} files ({self.faces} faces, {self.errors} unreadable) and "
                f"{self.paths} paths" + (f"; {self.pending_failures} items failed in the "
                                         "worker (re-run it, or re-stage)"
                                         if self.pending_failures else ""))


def _rows(table: dict) -> Iterator[dict]:
    cols = list(table)
    for i in range(table_len(table)):
        yield {c: table[c][i] for c in cols}


def import_rows(writer: SegmentWriter, source: FaceCache) -> None:
    """Append every row of ``source`` to ``writer`` (faces of a photo stay together)."""
    for name in ("paths", "files", "faces"):
        for row in _rows(getattr(source, name)):
            writer.add(name, **row)


def _load_results(results: Path) -> FaceCache:
    """A worker's results as a cache; a tampered file is one line naming it."""
    try:
        return load_cache(results)
    except CacheError:
        raise
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise QueueError(f"{results}: not readable worker results ({type(exc).__name__}: "
                         f"{exc}); re-run the worker into an empty folder") from None


def _check_staged_for(cache: FaceCache, queue: dict, cache_path: str, copy: Path) -> None:
    """The queue's staged root must be a source this cache recorded when it was staged:
    a queue copy edited to name another root cannot let foreign paths in."""
    src = posixpath.normpath(queue["params"]["src"])
    sources = cache.meta.get("sources")
    if not isinstance(sources, list) or src not in [posixpath.normpath(s) for s in sources
                                                    if isinstance(s, str)]:
        raise QueueError(f"{copy}: params.src {src!r} is not a folder {cache_path} was "
                         "staged from; merge into the cache the queue was staged for")


def merge_embed_results(cache_path: str, out: str) -> MergeSummary:
    """Fold a worker's results folder into the cache (idempotent: merging twice is harmless).

    Every row is checked against the queue the worker answered (OUT/queue.json) before
    anything is written: a bad results folder leaves the cache byte for byte unchanged.
    """
    from ..runtime.worker import failures_outstanding

    results = Path(out) / RESULTS_CACHE
    if not cache_exists(results):
        raise FileNotFoundError(f"{out}: no worker results ({RESULTS_CACHE}.segments/); run "
                                f"work/embed_worker.py QUEUE {out} first")
    copy = Path(out) / QUEUE_COPY
    if not copy.is_file():
        raise FileNotFoundError(f"{copy}: no copy of the queue beside the results; re-run "
                                f"work/embed_worker.py QUEUE {out}")
    queue = load_queue(copy, KIND_EMBED)
    res = _load_results(results)
    with cache_lock(cache_path):
        cache = load_cache(cache_path, must_exist=False)
        check_model(cache, res.meta.get("model"), res.meta.get("model_id"), cache_path)
        # the results themselves first: a tampered row is named in its own file
        validate_embed_results(res, queue, cache.embedding_dim or
                               res.meta.get("embedding_dim"), str(results))
        if table_len(res.paths) or table_len(res.files):
            _check_staged_for(cache, queue, cache_path, copy)
        summary = MergeSummary(files=res.n_files, faces=res.n_faces,
                               paths=table_len(res.paths),
                               errors=int((res.files["status"] == "error").sum()))
        summary.pending_failures = len(failures_outstanding(Path(out) / FAILURES_LOG,
                                                            res.files["sha256"].tolist()))
        meta = dict(cache.meta)
        meta.update({k: res.meta[k] for k in MODEL_META if k in res.meta})
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        writer = SegmentWriter(cache_path, meta)
        import_rows(writer, res)
        writer.flush(meta_update={})
        compact_cache(cache_path)
    return summary
