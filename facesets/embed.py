"""``embed``: list, hash, detect and embed photos into a cache, resumably.

A pipeline of plain stages: list + hash (scan.plan_embed) -> read + decode (a thread pool,
ahead of inference) -> detect + embed (main thread; ONNX Runtime uses the cores) -> append
to the cache in segments every ``flush_every`` files (cache.SegmentWriter). Killed at any
moment, a re-run loses at most one flush window; Ctrl-C flushes first.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from .analyze import (PhotoResult, describe_photo, detect_photo, face_row, file_row, finer_image,
                      load_photo, path_row)
from .backends.base import FaceBackend
from .cache import (CacheError, FaceCache, SegmentWriter, cache_lock, compact_cache,
                    load_cache)
from .imageio import DEFAULT_MAX_PIXELS, ImageError
from .scan import EmbedPlan, Listed, plan_embed, scan_source

DEFAULT_FLUSH_EVERY = 50


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

    def line(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        return (f"files seen {self.seen}, unchanged {self.unchanged}, new {self.new}, "
                f"aliased {self.aliased}, noface {self.noface}, errors {self.errors}; "
                f"faces {self.faces}; {rate:.1f} img/s"
                + (" (interrupted: re-run to resume)" if self.interrupted else ""))


def check_model(cache: FaceCache, model: str, model_id: str | None = None,
                cache_path: str = "") -> None:
    """Refuse to mix embeddings of two models in one cache."""
    have = cache.meta.get("model")
    if have and have != model:
        raise CacheError(f"{cache_path}: cache was made with model '{have}', not '{model}'; "
                         f"use --model {have} or another cache file")
    have_id = cache.meta.get("model_id")
    if model_id and have_id and have_id != model_id:
        raise CacheError(f"{cache_path}: cache was made with other weights ({have_id}) than "
                         f"this '{model}' pack ({model_id}); use the same pack or another "
                         "cache file")


def iter_analyzed(backend: FaceBackend, items: Iterable[Listed], workers: int = 2,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[PhotoResult]:
    """Analyse photos, yielding results in input order.

    Reading + detection-scale decoding and the finer decodes some photos need run in a pool
    of ``workers`` threads, ahead of and beside inference in this thread: while the model
    looks at one photo, the next ones are being read and decoded.
    """
    items = iter(items)
    window = max(2, 2 * workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        loading: deque = deque()   # futures of load_photo, input order
        detected: deque = deque()  # (DetectedPhoto, future of its finer decode | None)

        def fill():
            while len(loading) + len(detected) < window + 2:
                item = next(items, None)
                if item is None:
                    return
                loading.append(pool.submit(load_photo, item.path, item.sha256,
                                           backend.det_size, max_pixels))

        fill()
        while loading or detected:
            head = detected[0] if detected else None
            if head is not None and (head[1] is None or head[1].done() or not loading):
                detected.popleft()
                det, future = head
                try:
                    image = future.result() if future is not None else None
                except ImageError as exc:
                    det.result.status, det.result.error = "error", str(exc)
                    yield det.result
                else:
                    yield describe_photo(backend, det, image)
                fill()
                continue
            det = detect_photo(backend, loading.popleft().result())
            detected.append((det, pool.submit(finer_image, det) if det.needs_finer else None))
            fill()


def record_result(writer: SegmentWriter, result: PhotoResult, item: Listed,
                  aliases: list[Listed]) -> None:
    """Append one analysed photo (file row, its faces, its paths) to the writer."""
    writer.add("files", **file_row(result))
    for i, af in enumerate(result.faces):
        writer.add("faces", **face_row(result, i, af))
    for it in [item] + aliases:
        writer.add("paths", **path_row(it.path, it.sha256, it.size, it.mtime_ns))


def record_plan_paths(writer: SegmentWriter, plan: EmbedPlan) -> None:
    """Paths that need no embedding: copies of known content and unhashable files."""
    for it in plan.aliases:
        writer.add("paths", **path_row(it.path, it.sha256, it.size, it.mtime_ns))
    for it in plan.unreadable:
        writer.add("paths", **path_row(it.path, "", it.size, it.mtime_ns, it.error))


def embed_folder(src: str, cache_path: str, load: Callable[[], FaceBackend], model: str,
                 flush_every: int = DEFAULT_FLUSH_EVERY, workers: int = 2,
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
        listing = scan_source(src)
        paths, summary.skipped = listing.images, listing.skipped_lines(src)
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
        t_embed = time.monotonic()
        bar = tqdm(total=len(plan.to_embed), desc="embedding", unit="img",
                   disable=not progress or not plan.to_embed)
        done_since_flush = 0
        try:
            if backend is not None:
                by_path = {it.path: it for it in plan.to_embed}
                for result in iter_analyzed(backend, plan.to_embed, workers, max_pixels):
                    item = by_path[result.path]
                    record_result(writer, result, item,
                                  plan.pending_aliases.get(item.sha256, []))
                    summary.new += 1
                    summary.faces += len(result.faces)
                    summary.noface += result.status == "noface"
                    summary.errors += result.status == "error"
                    summary.embedded += 1
                    bar.update(1)
                    done_since_flush += 1
                    if done_since_flush >= flush_every:
                        writer.flush()
                        done_since_flush = 0
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
            writer.flush()
        summary.seconds = time.monotonic() - t_embed
        if not summary.interrupted:
            compact_cache(cache_path)
    return summary
