"""The one job loop: progress, flush every N items, Ctrl-C -> flush and stop, counts.

A ``Job`` turns a stream of items into recorded results (embed into a cache segment, enrich
a photo's face rows, a queue worker's results); ``run_items`` drives it: the progress
(runtime.progress: a bar on a terminal, plain lines in a log), a flush every
``flush_every`` recorded items so that a kill loses at most
that window, Ctrl-C -> drop what is half-recorded, flush and report interrupted, and the
final flush. Callers build their summaries from the ``JobResult`` and exit with
``EXIT_INTERRUPTED`` when it was interrupted.

``prefetch`` is the overlap every job uses: reading, decoding and preprocessing of the next
items run on a bounded pool of threads while the caller runs the model on the current ones
(a GPU otherwise waits on one thread's decoding); results come back in input order, so what
a job records, and when it flushes, is what the serial loop records.
Importable with the queue worker's minimal requirements (tqdm only).
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from .progress import progress_bar

DEFAULT_FLUSH_EVERY = 50

EXIT_ERROR = 2          # a known failure, reported as one "error:" line
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it); work done is flushed

# what a processed item turned out to be; a FAILED item has nothing recorded (it is retried
# by the next run) and so does not count towards the flush window
OK, NOFACE, ERROR, FAILED = "ok", "noface", "error", "failed"

Outcome = tuple[Any, str, str]   # (item, status, detail)


class Job:
    """One kind of work over a stream of items; subclasses fill these in."""

    def check(self, item: Any) -> str:
        """Why ``item`` cannot be processed now ('' if it can): it is then FAILED unseen."""
        return ""

    def process(self, items: Iterator[Any]) -> Iterator[Outcome]:
        """Yield ``(item, status, detail)`` per item, in order, after recording its result."""
        raise NotImplementedError

    def failed(self, item: Any, why: str) -> None:
        """An item failed (``check`` refused it or ``process`` yielded FAILED)."""

    def flush(self) -> None:
        """Make every recorded result durable."""

    def on_interrupt(self) -> None:
        """Ctrl-C came: drop what is recorded only in part (the flush that follows must
        write whole results only)."""


@dataclass
class JobResult:
    counts: Counter = field(default_factory=Counter)   # items by status
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def recorded(self) -> int:
        """Items whose result is recorded (every status but FAILED)."""
        return sum(n for status, n in self.counts.items() if status != FAILED)


def run_items(job: Job, items: Sequence[Any], flush_every: int, progress: bool = True,
              desc: str = "", unit: str = "it") -> JobResult:
    """Run ``job`` over ``items``: flush every ``flush_every`` recorded items and at the end;
    Ctrl-C stops the run (``interrupted``) after ``job.on_interrupt`` and the flush."""
    result = JobResult()
    bar = progress_bar(total=len(items), desc=desc, unit=unit,
                       disable=not progress or len(items) == 0, dynamic_ncols=True,
                       smoothing=0.1)
    since_flush = 0

    def count(item: Any, status: str, detail: str) -> None:
        if status == FAILED:
            job.failed(item, detail)
        result.counts[status] += 1
        bar.update(1)

    def checked() -> Iterator[Any]:
        for item in items:
            why = job.check(item)
            if why:
                count(item, FAILED, why)
            else:
                yield item

    t0 = time.monotonic()
    try:
        for item, status, detail in job.process(checked()):
            count(item, status, detail)
            if status == FAILED:
                continue
            since_flush += 1
            if since_flush >= flush_every:
                job.flush()
                since_flush = 0
    except KeyboardInterrupt:
        result.interrupted = True
        job.on_interrupt()
    finally:
        bar.close()
        job.flush()
        result.seconds = time.monotonic() - t0
    return result


T = TypeVar("T")
R = TypeVar("R")

DEFAULT_PREFETCH_WORKERS = 4
STREAM_STOP_WAIT_S = 10.0   # prefetch_stream: how long closing waits for its thread


def prefetch(items: Iterable[T], prepare: Callable[[T], R],
             workers: int = DEFAULT_PREFETCH_WORKERS,
             ahead: int | None = None) -> Iterator[tuple[T, R]]:
    """``(item, prepare(item))`` in input order, ``prepare`` running on ``workers`` threads
    for at most ``ahead`` items (default ``4 * workers``) beyond the one handed out; so
    memory stays bounded and a kill loses only work not yet recorded. ``workers < 1``: the
    serial loop (each item prepared when it is needed). ``prepare`` must be thread-safe and
    should return its expected failures as values: an exception it raises is raised here,
    at that item. Closing the generator (Ctrl-C, an error downstream) cancels what has not
    started; items already in a thread finish on their own."""
    if workers < 1:
        for item in items:
            yield item, prepare(item)
        return
    ahead = max(1, ahead if ahead is not None else 4 * workers)
    source = iter(items)
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < ahead + 1:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((item, pool.submit(prepare, item)))
            if not pending:
                return
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def prefetch_stream(items: Iterable[T], produce: Callable[[T], Iterable[R]], ahead: int = 8,
                    background: bool = True) -> Iterator[tuple[T, Iterator[R]]]:
    """``(item, its values)`` in input order, the values of ``produce(item)`` (a generator:
    the frames of one video shot, decoded in order) made on one background thread for at
    most ``ahead`` values beyond the one handed out, across items: while the caller works
    on one shot's frames, the next frames (and the next shot's) are being decoded, and
    memory stays bounded however long an item is. ``items`` is iterated here, in the
    caller's thread (one item ahead). An exception ``produce`` raises is raised in that
    item's values. ``background=False``: the serial loop. Closing the generator (Ctrl-C,
    an error downstream) stops the thread at its next value."""
    if not background:
        for item in items:
            yield item, iter(produce(item))
        return
    import queue as queue_mod

    todo: queue_mod.Queue = queue_mod.Queue()
    made: queue_mod.Queue = queue_mod.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                made.put(entry, timeout=0.1)
                return True
            except queue_mod.Full:
                continue
        return False

    def run() -> None:
        seq = 0
        while not stop.is_set():
            try:
                item = todo.get(timeout=0.1)
            except queue_mod.Empty:
                continue
            if item is todo:   # no more items
                return
            made_values = ()
            try:
                made_values = produce(item)
                for value in made_values:
                    if not put((seq, "value", value)):
                        return
                ending = (seq, "end", None)
            except BaseException as exc:   # handed to the caller, in this item's values
                ending = (seq, "error", exc)
            finally:
                # here, not at garbage collection: a video capture is released on this thread
                getattr(made_values, "close", lambda: None)()
            if not put(ending):
                return
            seq += 1

    def values(seq: int) -> Iterator[R]:
        while True:
            at, kind, value = made.get()
            if at < seq:   # left of an earlier item the caller did not drain
                continue
            if kind == "value":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    thread = threading.Thread(target=run, name="prefetch-stream", daemon=True)
    thread.start()
    source = iter(items)
    sent: deque = deque()
    try:
        seq, exhausted = 0, False
        while True:
            while not exhausted and len(sent) < 2:   # the one handed out and the next
                item = next(source, todo)
                exhausted = item is todo
                todo.put(item)
                if not exhausted:
                    sent.append(item)
            if not sent:
                return
            yield sent.popleft(), values(seq)
            seq += 1
    finally:
        stop.set()
        # the thread stops at its next value; waiting for it keeps a decoder's native
        # threads from being torn down under it at interpreter exit (Ctrl-C)
        thread.join(timeout=STREAM_STOP_WAIT_S)
