"""``immich stage``: bring the photos of an Immich library that have a big enough face into a
per-user folder, resumably, for ``embed`` (in-process or through the GPU worker's queue).

Per asset, in a pool of ``workers`` threads (the whole chain runs in the worker, so 8
workers wait on 8 requests at once):

  1. skip by path: ``--skip-thumbs`` passes over Immich's own thumbnails that an external
     library indexed as photos (``.../thumbs/...-preview.jpeg``);
  2. ``GET /api/faces?id=ASSET``: Immich's boxes, scaled from the preview they were found on
     to the original's size; no face, or no face with a short edge >= ``min_face`` px: skip;
  3. ``GET /api/assets/ASSET/original``, streamed into ``.immich/partial/``, hashed (sha256),
     then: content already in the cache -> ``known`` (dropped); content staged earlier in
     this run or a previous one -> ``alias`` of that file (dropped); else moved (os.replace)
     to ``ROOT/<originalPath tail>``.
Every outcome is one durable line of the state file (formats/immich_state.py): the same
command resumes where it stopped and fetches nothing twice. Failed requests are retried
(client); after 12 consecutive failures the client probes the server and, when it is gone,
stage stops with the state saved (``ServerDown``; the command exits 2). An original that
misses the client's deadline or exceeds its size cap is an ``error`` record like any failed
request: the other assets go on, and the next run fetches it again. The root is locked
(``output_lock``) for the whole run: a second stage of it fails at once with a LockError.
"""
from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from ..formats.cache import load_cache
from ..formats.immich_state import (ALIAS, ERROR, KNOWN, NOFACE, PARTIAL_DIR, SMALL, STAGED,
                                    STATE_DIR, THUMB, UNSUPPORTED, DONE, StateError,
                                    StateWriter, check_label, header, load_state, record)
from ..io.fsutil import fsync_dir, internal_dir, output_lock
from ..io.imageio import IMAGE_EXTENSIONS
from ..runtime.pipeline import work_dir
from ..runtime.progress import progress_bar
from ..sources.immich import (ImmichClient, ImmichRefused, RequestFailed, ServerDown,
                              asset_dims, face_short_edges, visibilities)

DEFAULT_WORKERS = 8
DEFAULT_MIN_FACE = 90          # px, short edge of a face box in the original
TAIL_PARTS = 2                 # originalPath tail kept: parent folder + file name
THUMB_PATH = re.compile(r"(^|/)thumbs/.*-(preview|thumbnail)\.(jpe?g|webp)$", re.IGNORECASE)


def default_root(user: str) -> Path:
    """work/immich/<user>/ in the project's work folder ($FACESETS_WORK_DIR when set)."""
    return work_dir() / "immich" / check_label(user)


def is_thumbnail(original_path: str) -> bool:
    return bool(THUMB_PATH.search(original_path.replace("\\", "/")))


def _clean(part: str) -> str:
    part = "".join("_" if c in '<>:"|?*' or ord(c) < 32 else c for c in part).strip()
    if part in ("", ".", ".."):
        return ""
    return "_" + part[1:] if part.startswith(".") else part   # hidden names are not scanned


def tail_path(original_path: str, asset_id: str) -> str:
    """``<parent>/<name>`` of the asset's originalPath (cleaned, relative, never hidden)."""
    parts = [_clean(p) for p in original_path.replace("\\", "/").split("/")]
    parts = [p for p in parts if p][-TAIL_PARTS:]
    if not parts:
        parts = [f"{asset_id}.jpg"]
    return "/".join(parts)


def _suffixed(rel: str, asset_id: str) -> str:
    p = PurePosixPath(rel)
    return str(p.with_name(f"{p.stem}-{asset_id[:12]}{p.suffix}"))


@dataclass
class StageSummary:
    seen: int = 0
    done_before: int = 0
    staged: int = 0
    staged_bytes: int = 0
    aliases: int = 0
    known: int = 0
    noface: int = 0
    small: int = 0
    thumbs: int = 0
    unsupported: int = 0
    errors: int = 0
    faces: int = 0
    seconds: float = 0.0
    requests: int = 0
    stopped: str = ""               # why it stopped early ("" when it went through)
    root: str = ""
    counts: dict = field(default_factory=dict)   # every status in the state, this run included

    @property
    def processed(self) -> int:
        return (self.staged + self.aliases + self.known + self.noface + self.small
                + self.thumbs + self.unsupported + self.errors)

    def line(self) -> str:
        rate = (f"; {self.processed / self.seconds:.1f} assets/s"
                if self.processed and self.seconds > 0 else "")
        return (f"assets seen {self.seen} ({self.done_before} done before), staged "
                f"{self.staged} ({self.staged_bytes / 1e6:.1f} MB, {self.faces} Immich faces), "
                f"{self.known} byte-identical to photos already in the cache, {self.aliases} "
                f"copies within the library, skipped {self.noface} without a face, "
                f"{self.small} with only small faces, {self.thumbs} Immich thumbnails, "
                f"{self.unsupported} in formats embed cannot read; {self.errors} failed "
                f"(retried next run){rate}")


class _Run:
    """What the worker threads share: the content seen so far and the paths taken."""

    def __init__(self, root: Path, latest: dict[str, dict], known: set[str]):
        self.root = root
        self.partial = root / STATE_DIR / PARTIAL_DIR
        self.known = known
        self.lock = threading.Lock()
        self.by_sha: dict[str, str] = {}      # sha256 -> staged relative path
        self.taken: dict[str, str] = {}       # staged relative path -> asset id
        for r in latest.values():
            if r["status"] == STAGED:
                self.by_sha.setdefault(r["sha256"], r["path"])
                self.taken[r["path"]] = r["asset"]

    def place(self, asset_id: str, tmp: Path, sha: str, rel: str) -> tuple[str, str]:
        """(status, relative path) of downloaded content, moved in or dropped."""
        with self.lock:
            if sha in self.known:
                tmp.unlink(missing_ok=True)
                return KNOWN, ""
            if sha in self.by_sha:
                tmp.unlink(missing_ok=True)
                return ALIAS, self.by_sha[sha]
            if self.taken.get(rel, asset_id) != asset_id:
                rel = _suffixed(rel, asset_id)
            self.taken[rel] = asset_id
            self.by_sha[sha] = rel
        dest = self.root / rel
        internal_dir(self.root, dest.parent.relative_to(self.root))   # no symlink out
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return STAGED, rel


def _stage_one(client: ImmichClient, run: _Run, asset: dict, min_face: float,
               skip_thumbs: bool, prev: dict | None = None) -> tuple[dict, BaseException | None]:
    """The whole chain for one asset: its state record, and the ServerDown that stopped it
    (then the record keeps what was fetched, so the next run does not fetch it again)."""
    aid = asset["id"]
    original = str(asset.get("originalPath") or "")
    if skip_thumbs and is_thumbnail(original):
        return record(aid, THUMB, original_path=original), None
    if os.path.splitext(original)[1].lower() not in IMAGE_EXTENSIONS and original:
        return record(aid, UNSUPPORTED, original_path=original), None
    seen = {}
    try:
        if prev and prev.get("status") == ERROR and "max_face" in prev and prev.get("faces"):
            n_faces, biggest = prev["faces"], float(prev["max_face"])   # fetched last run
        else:
            faces = client.faces(aid)
            if not faces:
                return record(aid, NOFACE), None
            n_faces = len(faces)
            biggest = max(face_short_edges(faces, asset_dims(asset)), default=0.0)
        seen = {"faces": n_faces, "max_face": round(biggest, 1)}
        if biggest < min_face:
            return record(aid, SMALL, **seen), None
        tmp = run.partial / f"{aid}.part"
        size, sha = client.download_original(aid, str(tmp))
    except RequestFailed as exc:
        return record(aid, ERROR, reason=str(exc), **seen), None
    except ServerDown as exc:
        return (record(aid, ERROR, reason="the server stopped answering", **seen)
                if seen else None), exc
    status, rel = run.place(aid, tmp, sha, tail_path(original, aid))
    rec = record(aid, status, sha256=sha, size=size, **seen)
    if rel:
        rec["path"] = rel
    return rec, None


def stage_immich(client: ImmichClient, user: str, cache_path: str, root: str | Path | None = None,
                 workers: int = DEFAULT_WORKERS, min_face: float = DEFAULT_MIN_FACE,
                 skip_thumbs: bool = False, include_archived: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> StageSummary:
    """Stage the library behind ``client`` into ``root`` (see the module docstring).

    Raises ServerDown (state saved) when the server goes away, ImmichRefused on 401/403 or a
    redirect to another origin, LockError while another stage holds ``root``.
    """
    t0 = time.monotonic()
    check_label(user)
    root = Path(os.path.abspath(root if root else default_root(user)))
    with output_lock(root):     # two stages of one root would take each other's .part files
        return _stage_locked(client, user, cache_path, root, workers, min_face, skip_thumbs,
                             include_archived, progress, t0)


def _stage_locked(client: ImmichClient, user: str, cache_path: str, root: Path, workers: int,
                  min_face: float, skip_thumbs: bool, include_archived: bool, progress: bool,
                  t0: float) -> StageSummary:
    root.mkdir(parents=True, exist_ok=True)
    head, latest = load_state(root)
    if head is not None and head["server"] != client.server:
        raise StateError(f"{root}: staged from {head['server']}, not {client.server}; give "
                         "this server its own --user or --root")
    cache = load_cache(cache_path, must_exist=False)
    run = _Run(root, latest, set(cache.files["sha256"].tolist()))
    run.partial.mkdir(parents=True, exist_ok=True)
    for stale in run.partial.glob("*.part"):   # a killed download: fetched again
        stale.unlink()
    writer = StateWriter(root, header(client.server, user, os.path.abspath(cache_path)))
    summary = StageSummary(root=str(root))

    assets = []
    with progress_bar(desc="listing", unit="asset", disable=not progress) as bar:
        for a in client.iter_assets(visibilities(include_archived)):
            assets.append(a)
            bar.update()
    summary.seen = len(assets)
    todo = [a for a in assets if latest.get(a["id"], {}).get("status") not in DONE]
    summary.done_before = summary.seen - len(todo)
    counter = {STAGED: "staged", ALIAS: "aliases", KNOWN: "known", NOFACE: "noface",
               SMALL: "small", THUMB: "thumbs", UNSUPPORTED: "unsupported", ERROR: "errors"}

    def note(rec: dict) -> None:
        writer.write(rec)
        latest[rec["asset"]] = rec
        attr = counter[rec["status"]]
        setattr(summary, attr, getattr(summary, attr) + 1)
        if rec["status"] == STAGED:
            summary.staged_bytes += rec.get("size", 0)
            summary.faces += rec.get("faces", 0)

    stop: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="immich")
    bar = progress_bar(total=len(todo), desc="staging", unit="asset", disable=not progress)
    try:
        it = iter(todo)
        pending = set()
        # keep a bounded window in flight: a stop leaves little half-done work behind
        for a in it:
            pending.add(pool.submit(_stage_one, client, run, a, min_face, skip_thumbs,
                                   latest.get(a["id"])))
            if len(pending) >= 4 * max(1, workers):
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    rec, down = fut.result()
                except ImmichRefused as exc:
                    rec, down = None, exc
                if rec is not None:
                    note(rec)
                    bar.update()
                stop = stop or down
            if stop is None:
                for a in it:
                    pending.add(pool.submit(_stage_one, client, run, a, min_face,
                                            skip_thumbs, latest.get(a["id"])))
                    if len(pending) >= 4 * max(1, workers):
                        break
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        summary.seconds = time.monotonic() - t0
        summary.requests = client.requests
        for r in latest.values():
            summary.counts[r["status"]] = summary.counts.get(r["status"], 0) + 1
    if stop is not None:
        raise stop
    return summary
