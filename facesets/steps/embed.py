"""``embed``: list, hash, detect and embed photos into a cache, resumably.

A pipeline of plain stages: list + hash (scan.plan_embed) -> read + decode (a thread pool,
ahead of inference) -> detect + embed (main thread; ONNX Runtime uses the cores) -> append
to the cache in segments every ``flush_every`` files (cache.SegmentWriter). Killed at any
moment, a re-run loses at most one flush window; Ctrl-C flushes first.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..backends.base import FaceBackend, providers_note
from ..core.analyze import (DECODE_WORKERS, iter_analyzed, job_status, record_plan_paths,
                             record_result)
from ..formats.cache import SegmentWriter, cache_lock, check_model, compact_cache, load_cache
from ..io.imageio import DEFAULT_MAX_PIXELS
from ..runtime.jobs import DEFAULT_FLUSH_EVERY, ERROR, NOFACE, Job, run_items
from ..sources.folder import EmbedPlan, FolderSource, Listed, plan_embed


@dataclass
class EmbedSummary:
    seen: int = 0
    unchanged: int = 0
    new: int = 0
    aliased: int = 0
    noface: int = 0
    errors: int = 0
    faces: int = 0
    embedded: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    skipped: list[str] = field(default_factory=list)   # what listing SRC passed over, why
    providers: str = ""     # where the models ran (backends.base.providers_note)

    def line(self) -> str:
        if self.seen and not (self.new or self.aliased or self.errors or self.noface
                              or self.interrupted):
            return (f"files seen {self.seen}, unchanged {self.unchanged}, new 0: nothing new "
                    "(the cache is up to date)")
        rate = (f"; {self.embedded / self.seconds:.1f} img/s"
                if self.embedded and self.seconds > 0 else "")
        return (f"files seen {self.seen}, unchanged {self.unchanged}, new {self.new}, "
                f"aliased {self.aliased}, noface {self.noface}, errors {self.errors}; "
                f"faces {self.faces}{rate}"
                + (f"; {self.providers}" if self.providers else "")
                + (" (interrupted: re-run to resume)" if self.interrupted else ""))


class _EmbedJob(Job):
    """Detect and embed the plan's photos into the cache writer (with their aliases)."""

    def __init__(self, backend: FaceBackend | None, writer: SegmentWriter, plan: EmbedPlan,
                 workers: int, max_pixels: int):
        self.backend, self.writer, self.plan = backend, writer, plan
        self.workers, self.max_pixels = workers, max_pixels
        self.faces = 0

    def process(self, items: Iterator[Listed]):
        by_path = {it.path: it for it in self.plan.to_embed}
        for result in iter_analyzed(self.backend, items, self.workers, self.max_pixels):
            item = by_path[result.path]
            record_result(self.writer, result, item,
                          self.plan.pending_aliases.get(item.sha256, []))
            self.faces += len(result.faces)
            yield item, job_status(result), result.error

    def flush(self) -> None:
        self.writer.flush()


def embed_folder(src: str, cache_path: str, load: Callable[[], FaceBackend], model: str,
                 flush_every: int = DEFAULT_FLUSH_EVERY, workers: int = DECODE_WORKERS,
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True,
                 log: Callable[[str], None] = print) -> EmbedSummary:
    """Embed every new photo under ``src`` into the cache at ``cache_path``.

    ``load`` builds the backend; it is called only when there is something to embed.
    """
    summary = EmbedSummary()
    t0 = time.monotonic()
    with cache_lock(cache_path):
        cache = load_cache(cache_path, must_exist=False)
        check_model(cache, model, cache_path=cache_path)
        source = FolderSource(src)
        paths, summary.skipped = source.list_ids(), source.skipped_lines()
        plan = plan_embed(paths, cache, progress=progress)
        summary.seen, summary.unchanged = plan.listed, plan.unchanged
        summary.aliased = len(plan.aliases) + sum(len(v) for v in plan.pending_aliases.values())
        summary.errors = len(plan.unreadable)
        if not plan.to_embed and not plan.aliases and not plan.unreadable:
            compact_cache(cache_path)  # segments of a run killed after its last flush
            summary.seconds = time.monotonic() - t0
            return summary
        meta = dict(cache.meta)
        backend = None
        if plan.to_embed:
            backend = load()
            check_model(cache, backend.name, backend.model_id, cache_path)
            meta.update(backend.describe())
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        sources = list(meta.get("sources", []))
        if os.path.abspath(src) not in sources:
            sources.append(os.path.abspath(src))
        meta["sources"] = sources
        writer = SegmentWriter(cache_path, meta)
        record_plan_paths(writer, plan)
        job = _EmbedJob(backend, writer, plan, workers, max_pixels)
        # no backend: nothing to embed; the run still flushes the aliases and unreadables
        result = run_items(job, plan.to_embed, flush_every, progress, "embedding", "img")
        summary.new = summary.embedded = result.recorded
        summary.faces = job.faces
        if backend is not None:
            summary.providers = providers_note(backend.providers, backend.active_providers())
        summary.noface = result.counts[NOFACE]
        summary.errors += result.counts[ERROR]
        summary.seconds, summary.interrupted = result.seconds, result.interrupted
        if not summary.interrupted:
            compact_cache(cache_path)
    return summary
