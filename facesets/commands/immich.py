"""immich stage|finalize|push: import a self-hosted Immich library (IMMICH_URL, IMMICH_API_KEY).

  immich stage --user LABEL --cache CACHE    fetch the originals with a big enough face into
                                             work/immich/LABEL/ (resumable), then queue them
                                             for the GPU worker (or --embed here)
  immich finalize LABEL                      stage -> embed (or worker + merge) -> match
                                             existing identities -> grow (export-swap the
                                             first time) -> report
                                             of identities still left out (discover)
  immich push --user LABEL [--dry-run]       the facesets back to Immich as people

The API key is read only from the environment and is never printed or written anywhere.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ..formats.swapset import MANIFEST_NAME
from ..formats.immich_state import (QUEUE_FILE, RAW_DIR, REFINED_DIR, RESULTS_DIR, STATE_DIR,
                                    SWAP_READY_DIR, check_label, load_finalize, load_state,
                                    raw_manifest, refine_manifest, state_path,
                                    write_finalize)
from ..runtime.jobs import EXIT_ERROR, EXIT_INTERRUPTED
from ..runtime.pipeline import work_dir
from ..runtime.program import program_name
from ..sources.immich import (BREAKER_THRESHOLD, DEADLINE_S, MAX_ORIGINAL_MB, ImmichClient,
                              ImmichError, ServerDown)
from ..steps.immich_stage import default_root, stage_immich
from .common import (add_cache_model_options, add_progress_option, backend_loader, defaults,
                     recorded_model, say)

ROOT = Path(__file__).resolve().parent.parent.parent
STAGE_DEFAULTS = defaults(stage_immich)
# finalize's steps, in order (worker + merge replace embed with --worker-python)
# export: `grow` when OUT/swap_ready holds a library (its new faces join their facesets or
# become new ones, whatever made the facesets: nothing renumbered, undoable), else
# `export-swap` (the first one); discover only reports what is left
STEPS_LOCAL = ("stage", "embed", "match", "export", "discover")
STEPS_WORKER = ("stage", "worker", "merge", "match", "export", "discover")


def register(sub) -> None:
    p = sub.add_parser("immich", description=__doc__)
    cmds = p.add_subparsers(dest="immich_command", metavar="{stage,finalize,push}")
    cmds.required = True

    s = cmds.add_parser("stage", help="fetch the originals with a big enough face, resumably",
                        description=_stage_help())
    s.add_argument("--user", required=True, metavar="LABEL",
                   help="a name for this library/key: the folder work/immich/LABEL/")
    s.add_argument("--cache", default=None,
                   help="the face-sets cache: content already in it is not staged again, "
                        "and the queue is for it (default: the one the state recorded)")
    _stage_options(s)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--queue", default=None,
                   help="where to write the embed queue (default ROOT/.immich/queue.json)")
    g.add_argument("--embed", action="store_true",
                   help="embed the staged photos into CACHE here instead of queueing them")
    g.add_argument("--no-queue", dest="write_queue", action="store_false",
                   help="only stage (no queue, no embedding)")
    add_cache_model_options(s)
    add_progress_option(s)
    s.set_defaults(func=run_stage)

    f = cmds.add_parser("finalize",
                        help="stage, embed, match, export, discover report: resumable",
                        description=_finalize_help())
    f.add_argument("user", metavar="LABEL", help="the --user label given to stage")
    f.add_argument("--cache", default=None, help="the face-sets cache (default: the one "
                                                  "the stage state recorded)")
    f.add_argument("--out", default=None,
                   help="the `run` output holding raw/, facesets/, swap_ready/ "
                        "(default work/out)")
    _stage_options(f)
    f.add_argument("--worker-python", default=None,
                   help="embed through work/embed_worker.py run by this Python (the GPU "
                        "venv; work/finalize_immich.sh passes $WIN_PYTHON) instead of "
                        "in-process")
    f.add_argument("--extend-args", default="",
                   help="extra options for the match step (`extend`), e.g. '--threshold 0.6'")
    f.add_argument("--export-args", default="",
                   help="extra options for `export-swap`, e.g. '--swap-outlier-threshold 0.5'")
    f.add_argument("--run-args", default="",
                   help="a library fed only from Immich (OUT holds no `run` output yet): the "
                        "first finalize makes it with `run` over the staged photos; extra "
                        "options for that run, e.g. '--min-faces 5' (later finalizes use the "
                        "settings the library recorded)")
    f.add_argument("--discover-args", default="",
                   help="extra options for the discover report (`library discover "
                        "--dry-run`), e.g. '--min-faces 5'")
    add_cache_model_options(f)
    f.set_defaults(func=run_finalize)

    u = cmds.add_parser("push", help="write the facesets back to Immich as people "
                                     "(--dry-run first)",
                        description="Each faceset of OUT/swap_ready becomes an Immich person "
                        "(named by the first line of its NAME.txt, else faceset_NNN; a person "
                        "of that name is reused): its faces are traced to the Immich assets "
                        "with the same bytes and reassigned to that person. Checks the "
                        "server's version first and refuses majors it does not know. "
                        "--dry-run prints the plan and changes nothing.")
    u.add_argument("--user", required=True, metavar="LABEL", help="the label given to stage")
    u.add_argument("--root", default=None, help="the stage root (default work/immich/LABEL/)")
    u.add_argument("--cache", default=None, help="the cache (default: the one the stage "
                                                  "state recorded)")
    u.add_argument("--out", default=None, help="the `run` output whose swap_ready/ is pushed "
                                               "(default work/out)")
    u.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _client_options(u)
    u.set_defaults(func=run_push)


def _stage_help() -> str:
    return ("Pages every IMAGE asset (POST /api/search/metadata), reads Immich's face boxes "
            "(GET /api/faces), keeps assets with a face whose short edge reaches --min-face "
            "px in the original, downloads those originals (sha256; content already in the "
            "cache or staged before is recorded, not kept twice) into ROOT/<originalPath "
            "tail>, and records every asset in ROOT/.immich/state.jsonl: the same command "
            "resumes. After "
            f"{BREAKER_THRESHOLD} consecutive failed requests it pings the server; if that "
            "fails it stops (exit 2) with the state saved. Then it writes the embed queue "
            "for work/embed_worker.py (or embeds here with --embed).")


def _finalize_help() -> str:
    return ("Runs, logging each step to work/logs/immich-LABEL-STEP-*.log and resuming at the "
            "first unfinished one: stage (as `immich stage`) -> embed (in-process; or worker "
            "+ merge with --worker-python) -> match (`extend` on OUT/raw and OUT/facesets: "
            "new faces join the faceset they are within the threshold of, the rest that "
            "cluster into enough photos become new facesets numbered past the maximum) -> "
            "export (`library grow` of the library in OUT/swap_ready: new faces join their "
            "facesets, whatever made them, or become new ones, nothing renumbered; "
            "`export-swap` when there is no library yet) -> discover (`library discover "
            "--dry-run` over the staged photos: reports identities still left out, e.g. under "
            "another --min-faces).")


def _stage_options(p) -> None:
    p.add_argument("--root", default=None,
                   help="folder for the originals (default work/immich/LABEL/ in the "
                        "project's work folder, or $FACESETS_WORK_DIR/immich/LABEL/)")
    p.add_argument("--workers", type=int, default=STAGE_DEFAULTS["workers"],
                   help="threads, each running an asset's whole chain (faces, filter, "
                        "download)")
    p.add_argument("--min-face", type=float, default=STAGE_DEFAULTS["min_face"],
                   help="keep assets with a face whose short edge is at least this many px "
                        "in the original")
    p.add_argument("--skip-thumbs", action="store_true",
                   help="skip Immich's own thumbnails indexed as photos (.../thumbs/...-"
                        "preview.jpeg)")
    p.add_argument("--include-archived", action="store_true",
                   help="also archived photos (Immich's default search is the timeline only)")
    _client_options(p)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _client_options(p) -> None:
    p.add_argument("--deadline", type=_positive, default=DEADLINE_S, metavar="S",
                   help="the most one request to Immich may take, from connecting to the "
                        "last byte, its retries included; an original that misses it is "
                        "recorded as failed and fetched again by the next run")
    p.add_argument("--max-original-mb", type=_positive, default=MAX_ORIGINAL_MB, metavar="MB",
                   help="originals larger than this are not kept (recorded as failed, tried "
                        "again by a run with a larger cap)")


def _client(args) -> ImmichClient:
    return ImmichClient.from_env(deadline=args.deadline,
                                 max_original_mb=args.max_original_mb)


def _root(args) -> Path:
    """The stage root, absolute (finalize's steps run in another folder)."""
    return Path(os.path.abspath(args.root)) if args.root \
        else Path(os.path.abspath(default_root(check_label(args.user))))


def _cache_of(args, root: Path) -> str:
    if args.cache:
        return os.path.abspath(args.cache)
    head, _ = load_state(root)
    if head is None:
        raise ValueError(f"no --cache given and {state_path(root)} records none yet; pass "
                         "--cache CACHE (the face-sets cache these photos join)")
    return head["cache"]


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return EXIT_ERROR


def run_stage(args) -> int:
    root = _root(args)
    try:
        client = _client(args)
        cache = _cache_of(args, root)
        note = _recorded_model(args, cache)
        if note:
            say(f"immich stage: {note}")
        summary = stage_immich(client, args.user, cache, root, workers=args.workers,
                               min_face=args.min_face, skip_thumbs=args.skip_thumbs,
                               include_archived=args.include_archived,
                               progress=args.progress)
    except ServerDown:
        return _fail(f"{client.server} stopped answering ({BREAKER_THRESHOLD} failed requests "
                     "in a row, and /api/server/ping failed); every asset done so far is "
                     f"saved in {state_path(root)}: re-run the same command when the server "
                     "is back")
    except ImmichError as exc:
        return _fail(str(exc))
    say(f"immich stage: {summary.line()}")
    say(f"immich stage: originals in {root}, state {state_path(root)}")
    if summary.errors:
        say(f"immich stage: {summary.errors} assets failed; re-run the same command to retry "
            "them")
    if args.embed:
        from ..steps.embed import embed_folder

        s = embed_folder(str(root), cache, backend_loader(args), args.model,
                         progress=args.progress)
        say(f"embed: {s.line()}")
        return EXIT_INTERRUPTED if s.interrupted else 0
    if args.write_queue:
        from ..steps.embed_queue import stage_embed_queue

        queue = args.queue or str(root / STATE_DIR / QUEUE_FILE)
        s = stage_embed_queue(str(root), cache, queue, args.model, args.model_root,
                              args.det_size, progress=args.progress)
        say(f"immich stage: queue: {s.line()}; queue {queue}")
        say(f"next: work/embed_worker.py {queue} RESULTS, then `{program_name()} embed {cache} "
            "--merge-results RESULTS` (or `immich finalize " f"{args.user}` for everything)")
    return 0


def run_push(args) -> int:
    from ..steps.immich_push import apply_push, plan_push

    root = _root(args)
    cache = _cache_of(args, root)
    swap = (Path(args.out) if args.out else work_dir() / "out") / SWAP_READY_DIR
    try:
        client = _client(args)
        plans = plan_push(client, swap, root, cache)
        for plan in plans:
            say(f"immich push{' (dry run)' if args.dry_run else ''}: {plan.line()}")
        if args.dry_run:
            say(f"immich push (dry run): {sum(len(p.assign) for p in plans)} faces would be "
                "assigned; nothing changed")
            return 0
        done = apply_push(client, plans, say)
    except ServerDown:
        return _fail(f"{client.server} stopped answering; nothing is lost: re-run the same "
                     "push when the server is back (faces already assigned are skipped)")
    except ImmichError as exc:
        return _fail(str(exc))
    say(f"immich push: {done['people_created']} people created, {done['faces_assigned']} "
        "faces assigned")
    return 0


# ---- finalize ----------------------------------------------------------------------------
def _under_wsl() -> bool:
    if os.environ.get("WSL_DISTRO_NAME"):
        return True
    try:
        return "microsoft" in Path("/proc/version").read_text().lower()
    except OSError:
        return False


def _worker_path(path: Path, worker_python: str) -> str:
    """A path as the worker's Python sees it (a Windows python.exe under WSL: C:\\...)."""
    if worker_python.lower().endswith(".exe") and _under_wsl():
        return subprocess.run(["wslpath", "-w", str(path)], capture_output=True, text=True,
                              check=True).stdout.strip()
    return str(path)


def _recorded_model(args, cache: str) -> str:
    """--model not given: the pack the cache recorded (never silently another one)."""
    from ..formats.cache import cache_exists, load_cache

    return recorded_model(args, [(load_cache(cache).meta, cache)] if cache_exists(cache)
                          else [])


def _finalize_model(args, cache: str, out: Path) -> str:
    """--model not given: the pack the cache recorded, from the folder the cache or else
    the library recorded (a cache a worker filled does not know the folder), so every step
    loads the same pack without the flags being passed again."""
    from ..core.settings import library_settings
    from ..formats.cache import cache_exists, load_cache

    lib = library_settings(out / SWAP_READY_DIR)
    records = [(load_cache(cache).meta, cache)] if cache_exists(cache) else []
    if lib.model:
        records.append(({"model": lib.model, "pack_dir": lib.pack_dir}, str(lib.path)))
    return recorded_model(args, records) if records else ""


def _model_args(args) -> list[str]:
    """The model options finalize passes on: only those given (a step reading the cache
    uses the pack it recorded)."""
    out = (["--model", args.model] if args.model else []) + ["--det-size", str(args.det_size)]
    if args.model_root:
        out += ["--model-root", args.model_root]
    if args.providers:
        out += ["--providers", args.providers]
    return out


def _finalize_commands(args, root: Path, cache: str, out: Path) -> dict[str, list[str]]:
    py = [sys.executable, str(ROOT / "sort_faces.py")]
    stage = py + ["immich", "stage", "--user", args.user, "--cache", cache, "--root",
                  str(root), "--workers", str(args.workers), "--min-face", str(args.min_face),
                  "--deadline", repr(args.deadline), "--max-original-mb",
                  repr(args.max_original_mb), "--no-progress"] \
        + (["--skip-thumbs"] if args.skip_thumbs else []) \
        + (["--include-archived"] if args.include_archived else []) + _model_args(args)
    results = root / STATE_DIR / RESULTS_DIR
    match = (py + ["extend", cache, str(out / RAW_DIR), "--refine-out", str(out / REFINED_DIR)]
             + shlex.split(args.extend_args)) if _has_run_output(out) else \
        (py + ["run", str(root), str(out), "--cache", cache, "--no-progress"]
         + _model_args(args) + shlex.split(args.run_args))
    library = (out / SWAP_READY_DIR / MANIFEST_NAME).is_file()
    export = py + (["library", "grow", str(out / SWAP_READY_DIR), cache, "--no-progress"]
                   if library else
                   ["export-swap", cache, str(refine_manifest(out)), str(out / SWAP_READY_DIR)]
                   ) + shlex.split(args.export_args)
    cmds = {"match": match, "export": export,
            "discover": py + ["library", "discover", str(out / SWAP_READY_DIR), cache, str(root),
                              "--dry-run", "--no-progress"] + shlex.split(args.discover_args)}
    if args.worker_python:
        wp = args.worker_python
        cmds["stage"] = stage + ["--queue", str(root / STATE_DIR / QUEUE_FILE)]
        cmds["worker"] = [wp, _worker_path(ROOT / "work" / "embed_worker.py", wp),
                          _worker_path(root / STATE_DIR / QUEUE_FILE, wp),
                          _worker_path(results, wp)]
        cmds["merge"] = py + ["embed", cache, "--merge-results", str(results)]
    else:
        cmds["stage"] = stage + ["--no-queue"]
        cmds["embed"] = py + ["embed", str(root), cache, "--no-progress"] + _model_args(args)
    return cmds


def run_finalize(args) -> int:
    # every path absolute, once: the steps run as child processes in the project folder
    root = _root(args)
    cache = _cache_of(args, root)
    out = Path(os.path.abspath(args.out if args.out else work_dir() / "out"))
    raw, refined = raw_manifest(out), refine_manifest(out)
    if raw.is_file() != refined.is_file():
        missing = refined if raw.is_file() else raw
        raise FileNotFoundError(f"{missing}: missing; finalize grows the outputs of `run SRC "
                                "OUT` (re-run that `run`, or pass its OUT with --out)")
    if not raw.is_file():
        say(f"immich finalize: {out} holds no `run` output yet: a library fed only from "
            "Immich; its match step is `run` over the staged photos")
    note = _finalize_model(args, cache, out)
    if note:
        say(f"immich finalize: {note}; every step uses it")
    steps = STEPS_WORKER if args.worker_python else STEPS_LOCAL
    done = load_finalize(root, steps)
    if len(done) == len(steps):   # the last run finished: this is a new one
        done = []
        write_finalize(root, done, steps)
    cmds = _finalize_commands(args, root, cache, out)
    logs = Path(os.path.abspath(work_dir() / "logs"))
    logs.mkdir(parents=True, exist_ok=True)
    for step in steps:
        if step in done:
            say(f"== {step}: done in this run already, skipped")
            continue
        log = logs / f"immich-{args.user}-{step}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        results = root / STATE_DIR / RESULTS_DIR / "results.npz.segments"
        if step == "worker":
            code = _merge_earlier_results(cmds["merge"], root, logs, args.user)
            if code != 0:
                return _fail(f"merging the results of an earlier worker run failed (exit "
                             f"{code}; logs in {logs}); fix it and re-run `immich finalize "
                             f"{args.user}`")
        if step in ("match", "export"):   # the outputs may have been made since
            cmds = _finalize_commands(args, root, cache, out)
        if step == "merge" and not any(results.glob("seg-*.npz")):
            say(f"== {step}: the worker produced no results (nothing new to embed), skipped")
        else:
            code = _run_logged(step, cmds[step], log)
            if code != 0:
                return _fail(f"step {step} failed (exit {code}; log {log}); fix it and re-run "
                             f"`immich finalize {args.user}` to resume at {step}")
        done.append(step)
        write_finalize(root, done, steps)
    say(f"immich finalize: done; facesets in {out / 'swap_ready'} (logs {logs})")
    return 0


def _has_run_output(out: Path) -> bool:
    """OUT holds what `run SRC OUT` makes (raw/ and facesets/ manifests)."""
    return raw_manifest(out).is_file() and refine_manifest(out).is_file()


def _merge_earlier_results(merge: list[str], root: Path, logs: Path, user: str) -> int:
    """Before the worker answers a new queue: the results folder of an earlier worker run
    (another queue) is merged into the cache (idempotent: already merged rows are
    harmless) and removed, so finalize re-runs any number of times in worker mode."""
    import shutil

    from ..formats.queue import KIND_EMBED, QUEUE_COPY, RESULTS_CACHE, load_queue

    results = root / STATE_DIR / RESULTS_DIR
    copy, queue = results / QUEUE_COPY, root / STATE_DIR / QUEUE_FILE
    if not copy.is_file() or not queue.is_file():
        return 0
    held, now = load_queue(copy, KIND_EMBED), load_queue(queue, KIND_EMBED)
    if held["params"] == now["params"] and held["items"] == now["items"]:
        return 0   # this run's own results (a worker resumed)
    if any((results / f"{RESULTS_CACHE}.segments").glob("seg-*.npz")):
        log = logs / f"immich-{user}-merge-{time.strftime('%Y%m%d-%H%M%S')}.log"
        say("== worker: the results folder holds an earlier queue's results: merged first")
        code = _run_logged("merge", merge, log)
        if code != 0:
            return code
    shutil.rmtree(results)
    return 0


def _child_env() -> dict[str, str]:
    """The environment of finalize's steps: a relative $FACESETS_WORK_DIR made absolute
    (they run in the project folder, not the caller's)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if env.get("FACESETS_WORK_DIR"):
        env["FACESETS_WORK_DIR"] = os.path.abspath(env["FACESETS_WORK_DIR"])
    return env


def _run_logged(step: str, cmd: list[str], log: Path) -> int:
    """Run one step, its output shown and appended to ``log`` (the command line too: it holds
    no secret, the key stays in the environment)."""
    say(f"== {step}: {' '.join(shlex.quote(c) for c in cmd)}  (log {log})")
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT, env=_child_env())
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            fh.write(line)
        return proc.wait()
