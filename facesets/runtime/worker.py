"""What every queue worker shares (work/*_worker.py): arguments, queue, path mapping,
skipping finished items, per-item failures and the summary, around the one job loop.

A worker kind supplies a ``WorkerJob`` (a runtime.jobs.Job): which item ids its results
already hold, how to process a stream of items (recording results itself) and how to flush
them durably. On top of the one job loop (runtime.jobs.run_items) this adds the queue's
side: finished items skipped, each item checked before it is opened, failures logged for a
retry. Together they keep the resumability contract of docs/queue-format.md: results are
flushed every ``--batch`` items, so a kill loses at most that window, and a restart skips
finished items.
Importable with the worker's minimal requirements only (no scikit-learn, torch, scenedetect).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..formats.queue import JsonlAppender, QueueError, latest_by_id, load_queue, read_jsonl
from ..io.fsutil import FileLock, LockError
from .jobs import (DEFAULT_PREFETCH_WORKERS, ERROR, EXIT_ERROR, EXIT_INTERRUPTED, FAILED, NOFACE,
                   OK, Job, run_items)
from .pathmap import PathMapError, PathMapper

DEFAULT_BATCH = 50


@dataclass
class WorkItem:
    id: str
    path: str            # as queued (WSL); results carry this
    local: str           # as this machine opens it
    fields: dict         # the queue item itself (kind-specific fields)


@dataclass
class WorkerSummary:
    name: str
    queued: int = 0
    already_done: int = 0
    done: int = 0
    noface: int = 0
    errors: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    unit: str = "img"
    extra: dict = field(default_factory=dict)
    providers: str = ""     # where the models ran (backends.base.providers_note)

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        return (f"{self.name}: queued {self.queued}, already done {self.already_done}, "
                f"done now {self.done} (noface {self.noface}, unreadable {self.errors}{extra}), "
                f"failed {self.failed}" + (" (retried next run)" if self.failed else "")
                + f"; {rate:.1f} {self.unit}/s"
                + (f"; {self.providers}" if self.providers else "")
                + (" (interrupted: re-run the same command to resume)"
                   if self.interrupted else ""))


class WorkerJob(Job):
    """What one worker kind does over its ``WorkItem``s; subclasses fill these in (and
    ``process``, ``flush`` of runtime.jobs.Job)."""

    name = "worker"
    unit = "img"

    def done_ids(self) -> set[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Load models; called only when there is something to do."""

    def extra(self) -> dict:
        return {}

    def providers_note(self) -> str:
        """Where its models ran (backends.base.providers_note); '' when it has none."""
        backend = getattr(self, "backend", None)
        if backend is None:
            return ""
        from ..backends.base import providers_note

        return providers_note(backend.providers, backend.active_providers())


def add_worker_args(p: argparse.ArgumentParser, results_help: str) -> None:
    p.add_argument("queue", help="queue JSON staged on the WSL side")
    p.add_argument("results", help=results_help)
    p.add_argument("--providers", default=None,
                   help="ONNX Runtime providers, comma-separated (default: the best "
                        "available of DirectML, CUDA, CoreML, CPU)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"flush results every N items: the most a kill loses ({DEFAULT_BATCH})")
    p.add_argument("--path-map", action="append", default=[], metavar="FROM=TO",
                   help="open queue paths under FROM at TO instead (repeatable; overrides "
                        "the automatic /mnt/<drive> and \\\\wsl.localhost mapping)")
    p.add_argument("--model-root", default=None,
                   help="folder holding models/<name>/ on this machine (default: the "
                        "queue's, mapped like the photo paths, else ~/.insightface)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (the summary is still printed)")


def prefetch_args(p: argparse.ArgumentParser) -> None:
    """``--workers``: the threads reading, decoding and preprocessing ahead of inference
    (runtime.jobs.prefetch)."""
    p.add_argument("--workers", type=int, default=DEFAULT_PREFETCH_WORKERS,
                   help="threads reading, decoding and preprocessing the next items while "
                        f"the model runs ({DEFAULT_PREFETCH_WORKERS}; 0: the serial loop)")


def work_items(queue: dict, mapper: PathMapper) -> list[WorkItem]:
    return [WorkItem(id=it["id"], path=it["path"], local=mapper(it["path"]), fields=it)
            for it in queue["items"]]


def map_param_path(value: str | None, mapper: PathMapper) -> str | None:
    """A path parameter of the queue (model folder, model root) as this machine sees it."""
    if value and value.startswith("/"):
        return mapper(value)
    return value


@contextlib.contextmanager
def worker_lock(path: Path, what: str):
    """One worker per results location. On Windows an OS byte lock (released by the OS when
    the process dies), elsewhere the project's lock file."""
    if os.name != "nt":
        with FileLock(path, what=what):
            yield
        return
    import msvcrt  # Windows only

    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        fh.close()
        raise LockError(f"{what} is in use by another worker (lock {path}); wait for it "
                        "to finish") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        fh.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def precheck(item: WorkItem) -> str:
    """Why an item cannot be processed now ('' if it can): a missing file is most often a
    path-mapping problem, and a changed one needs re-staging; both are retried later."""
    try:
        st = os.stat(item.local)
    except FileNotFoundError:
        return f"not found at {item.local} (check the path mapping: --path-map FROM=TO)"
    except OSError as exc:
        return f"cannot open {item.local} ({type(exc).__name__}: {exc})"
    size = item.fields.get("size")
    if isinstance(size, int) and st.st_size != size:
        return f"changed since staging (size {st.st_size}, queued {size}); re-stage the queue"
    return ""


class _CheckedJob(Job):
    """A worker kind's job as the loop runs it: each item checked before it is opened, every
    failure logged (retried by the next run), the log flushed with the results."""

    def __init__(self, job: WorkerJob, failures: JsonlAppender):
        self.job, self.failures = job, failures

    def check(self, item: WorkItem) -> str:
        return precheck(item)

    def process(self, items):
        return self.job.process(items)

    def failed(self, item: WorkItem, why: str) -> None:
        self.failures.add({"id": item.id, "path": item.path, "local": item.local,
                           "error": why, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def flush(self) -> None:
        self.job.flush()
        self.failures.flush()

    def on_interrupt(self) -> None:
        self.job.on_interrupt()


def run_job(job: WorkerJob, items: list[WorkItem], failures_path: Path, batch: int,
            progress: bool = True) -> WorkerSummary:
    """Process the items the job has not finished; flush every ``batch`` items."""
    summary = WorkerSummary(name=job.name, queued=len(items), unit=job.unit)
    done = job.done_ids()
    todo = [it for it in items if it.id not in done]
    summary.already_done = len(items) - len(todo)
    failures = JsonlAppender(failures_path)
    if not todo:
        return summary
    job.start()
    result = run_items(_CheckedJob(job, failures), todo, batch, progress, job.name, job.unit)
    summary.extra = job.extra()
    summary.providers = job.providers_note()
    summary.done = sum(result.counts[status] for status in (OK, NOFACE, ERROR))
    summary.noface, summary.errors = result.counts[NOFACE], result.counts[ERROR]
    summary.failed = result.counts[FAILED]
    summary.seconds, summary.interrupted = result.seconds, result.interrupted
    return summary


def failures_outstanding(failures_path: Path, done: Iterable[str]) -> dict[str, dict]:
    """Failures whose item has not been done since (what the operator should look at)."""
    records, _ = read_jsonl(failures_path)
    done = set(done)
    return {k: v for k, v in latest_by_id(records).items() if k not in done}


def main(argv: list[str] | None, kind: str, make_job, results_help: str,
         description: str, extra_args=None) -> int:
    """Entry point of a worker script: parse, load the queue, run the job, print a summary."""
    p = argparse.ArgumentParser(description=description)
    add_worker_args(p, results_help)
    if extra_args:
        extra_args(p)
    args = p.parse_args(argv)
    from ..backends.base import BackendError
    from ..formats.cache import CacheError

    try:
        if args.batch < 1:
            raise ValueError("--batch must be at least 1")
        queue = load_queue(args.queue, kind)
        mapper = PathMapper(queue.get("wsl_distro"), args.path_map)
        items = work_items(queue, mapper)
        job, lock_path, failures_path = make_job(queue, args, mapper)
        with worker_lock(lock_path, what=f"results {args.results}"):
            summary = run_job(job, items, failures_path, args.batch, args.progress)
    except (QueueError, PathMapError, BackendError, CacheError, LockError, ValueError,
            FileNotFoundError, PermissionError) as exc:
        if os.environ.get("FACESETS_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(summary.line() + (f" (see {failures_path})" if summary.failed else ""), flush=True)
    return EXIT_INTERRUPTED if summary.interrupted else 0
