"""What every queue worker shares (work/*_worker.py): arguments, queue, path mapping,
skipping finished items, per-item failures and the summary, around the one job loop.

A worker kind supplies a ``WorkerJob`` (a runtime.jobs.Job): which item ids its results
already hold, how to process a stream of items (recording results itself) and how to flush
them durably. On top of the one job loop (runtime.jobs.run_items) this adds the queue's
side: finished items skipped, each item checked before it is opened, failures logged for a
retry. Together they keep the resumability contract of docs/queue-format.md: results are
flushed every ``--flush-every`` items, so a kill loses at most that window, and a restart
skips finished items.
The worker options live here (argparse); a worker kind's parameters are a frozen dataclass
(``WorkerParams`` or its subclass in the kind's step) whose field defaults are the options'
defaults; ``main`` builds it and hands it to the kind's ``make_job``.
Importable with the worker's minimal requirements only (no scikit-learn, torch, scenedetect).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Iterable

from ..formats.queue import JsonlAppender, QueueError, latest_by_id, load_queue, read_jsonl
from ..io.fsutil import FileLock, LockError
from .jobs import (DEFAULT_FLUSH_EVERY, DEFAULT_PREFETCH_WORKERS, ERROR, EXIT_ERROR,
                   EXIT_INTERRUPTED, FAILED, NOFACE, OK, Job, run_items)
from .pathmap import PathMapError, PathMapper


@dataclass(frozen=True)
class WorkerParams:
    """What every worker kind's job takes; a kind with more (a scorer, a model batch) adds
    fields in a subclass in its step. The defaults here are the worker options' defaults."""
    results: str
    providers: str | None = None
    model_root: str | None = None
    flush_every: int = DEFAULT_FLUSH_EVERY     # results flushed every N items (the kill window)
    workers: int = DEFAULT_PREFETCH_WORKERS    # threads reading ahead of the model; 0: serial


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


def field_defaults(params_type) -> dict:
    """Each field's default of a parameters dataclass (fields without one left out)."""
    return {f.name: f.default for f in fields(params_type) if f.default is not MISSING}


def worker_options(p: argparse.ArgumentParser, params_type: type = WorkerParams,
                   results_help: str = "results location") -> None:
    """The options every worker (and `occlusion score`) takes, defaults from ``params_type``.
    ``--flush-every`` and ``--batch-size`` default to None here: ``settle_options`` fills
    them in after parsing, so that the old ``--batch`` can stand for what was not given."""
    d = field_defaults(params_type)
    p.add_argument("queue", help="queue JSON staged on the WSL side")
    p.add_argument("results", help=results_help)
    p.add_argument("--providers", default=d["providers"],
                   help="ONNX Runtime providers, comma-separated (default: the best "
                        "available of DirectML, CUDA, CoreML, CPU)")
    sized = "batch_size" in d
    p.add_argument("--flush-every", type=int, default=None, metavar="N",
                   help="write results durably every N items: the most a kill loses "
                        f"({d['flush_every']})"
                        + ("; not the model's batch (--batch-size)" if sized else ""))
    if sized:
        p.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="items per inference batch of the model (on DirectML a fixed "
                            f"shape: keep it between runs) ({d['batch_size']}); not the "
                            "flush window (--flush-every)")
    # the old spelling of the flush window (and, where there is one, of the model batch)
    p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=d["workers"],
                   help="threads reading, decoding and preprocessing the next items while "
                        f"the model runs ({d['workers']}; 0: the serial loop)")
    p.add_argument("--path-map", action="append", default=[], metavar="FROM=TO",
                   help="open queue paths under FROM at TO instead (repeatable; overrides "
                        "the automatic /mnt/<drive> and \\\\wsl.localhost mapping)")
    p.add_argument("--model-root", default=d["model_root"],
                   help="folder holding models/<name>/ on this machine (default: the "
                        "queue's, mapped like the photo paths, else ~/.insightface)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (the summary is still printed)")


def settle_options(args, params_type: type = WorkerParams) -> None:
    """After parsing: ``--batch N`` (deprecated; one warning line) stands for
    ``--flush-every N`` and, where the kind has a model batch, ``--batch-size N``, unless
    those were given; what is still unset takes the dataclass default; each must be >= 1."""
    d = field_defaults(params_type)
    sized = "batch_size" in d
    if args.batch is not None:
        print("warning: --batch is deprecated: use --flush-every N (results flushed every N "
              "items)" + (" and --batch-size N (the model's batch)" if sized else ""),
              file=sys.stderr, flush=True)
    for name in ("flush_every", "batch_size") if sized else ("flush_every",):
        flag = "--" + name.replace("_", "-")
        if getattr(args, name) is None:
            setattr(args, name, d[name] if args.batch is None else args.batch)
        if getattr(args, name) < 1:
            raise ValueError(f"{flag} {getattr(args, name)}: must be at least 1")
    if args.workers < 0:
        raise ValueError(f"--workers {args.workers}: must be 0 or more")


def params_from(args, params_type: type = WorkerParams, **given):
    """The parameters dataclass from parsed options: each field from the option of its name
    (``given`` overrides, e.g. a nested dataclass the kind builds itself)."""
    values = {f.name: getattr(args, f.name) for f in fields(params_type)
              if f.name not in given and hasattr(args, f.name)}
    return params_type(**values, **given)


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


def run_job(job: WorkerJob, items: list[WorkItem], failures_path: Path, flush_every: int,
            progress: bool = True) -> WorkerSummary:
    """Process the items the job has not finished; flush every ``flush_every`` items."""
    summary = WorkerSummary(name=job.name, queued=len(items), unit=job.unit)
    done = job.done_ids()
    todo = [it for it in items if it.id not in done]
    summary.already_done = len(items) - len(todo)
    failures = JsonlAppender(failures_path)
    if not todo:
        return summary
    job.start()
    result = run_items(_CheckedJob(job, failures), todo, flush_every, progress, job.name,
                       job.unit)
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


def main(argv: list[str] | None, kind: str, make_job, results_help: str, description: str,
         params_type: type = WorkerParams, extra_options=None, build_params=None) -> int:
    """Entry point of a worker script: parse, load the queue, run the job, print a summary.
    ``make_job(queue, params, mapper)`` gets a ``params_type`` built by ``build_params(args)``
    (default: ``params_from``); ``extra_options(p)`` adds the kind's own options."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    worker_options(p, params_type, results_help)
    if extra_options:
        extra_options(p)
    args = p.parse_args(argv)
    from ..backends.base import BackendError
    from ..formats.cache import CacheError

    try:
        settle_options(args, params_type)
        params = build_params(args) if build_params else params_from(args, params_type)
        queue = load_queue(args.queue, kind)
        mapper = PathMapper(queue.get("wsl_distro"), args.path_map)
        items = work_items(queue, mapper)
        job, lock_path, failures_path = make_job(queue, params, mapper)
        with worker_lock(lock_path, what=f"results {args.results}"):
            summary = run_job(job, items, failures_path, params.flush_every, args.progress)
    except (QueueError, PathMapError, BackendError, CacheError, LockError, ValueError,
            FileNotFoundError, PermissionError) as exc:
        if os.environ.get("FACESETS_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(summary.line() + (f" (see {failures_path})" if summary.failed else ""), flush=True)
    return EXIT_INTERRUPTED if summary.interrupted else 0
