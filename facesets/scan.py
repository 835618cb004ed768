"""Listing and hashing photo files: the cheap part of embed (the WSL side of a queue).

``plan_embed`` decides, against a cache, which listed files are unchanged (skipped without
hashing: same size and mtime as recorded), which are copies of known content (aliases) and
which are new content to embed. Both in-process embed and queue staging use it.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from .cache import FaceCache
from .fsutil import sha256_file
from .imageio import IMAGE_EXTENSIONS

SKIP_DIRS = {"@eaDir", "#recycle", "$RECYCLE.BIN"}  # NAS thumbnails, recycle bins


def list_images(src: str) -> list[str]:
    """Absolute paths of image files under ``src`` (recursive, sorted, extension match is
    case-insensitive). Hidden folders (``.name``) and NAS thumbnail folders are skipped."""
    src = os.path.abspath(src)
    if os.path.isfile(src):
        return [src] if os.path.splitext(src)[1].lower() in IMAGE_EXTENSIONS else []
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: no such folder; pass the folder of photos to embed")
    out = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                out.append(os.path.join(root, name))
    out.sort()
    return out


@dataclass
class Listed:
    path: str
    size: int
    mtime_ns: int
    sha256: str = ""
    error: str = ""


@dataclass
class EmbedPlan:
    listed: int = 0
    unchanged: int = 0
    to_embed: list[Listed] = field(default_factory=list)          # canonical, new content
    aliases: list[Listed] = field(default_factory=list)           # copies of known content
    pending_aliases: dict[str, list[Listed]] = field(default_factory=dict)  # of to_embed
    unreadable: list[Listed] = field(default_factory=list)        # could not even be hashed


def _stat_and_hash(path: str) -> Listed:
    try:
        st = os.stat(path)
        item = Listed(path, st.st_size, st.st_mtime_ns)
        item.sha256 = sha256_file(path)
    except FileNotFoundError:
        return Listed(path, 0, 0, error="file vanished before it could be hashed")
    except OSError as exc:
        return Listed(path, 0, 0, error=f"cannot read ({type(exc).__name__}: {exc})")
    return item


def plan_embed(paths: list[str], cache: FaceCache, workers: int = 2,
               progress: bool = True) -> EmbedPlan:
    """Classify listed files against ``cache``; hashes only new or changed paths."""
    plan = EmbedPlan(listed=len(paths))
    index = cache.path_index()
    known_shas = set(cache.files["sha256"].tolist())
    to_hash = []
    for p in paths:
        rec = index.get(p)
        if rec is not None:
            try:
                st = os.stat(p)
            except OSError:
                to_hash.append(p)
                continue
            if rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
                # unchanged; a path whose content never got a files row (a crash between
                # recording an alias and embedding its original) is embedded now
                if rec[2] and rec[2] not in known_shas and not rec[3]:
                    plan.to_embed.append(Listed(p, rec[0], rec[1], rec[2]))
                    known_shas.add(rec[2])
                else:
                    plan.unchanged += 1
                continue
        to_hash.append(p)
    new_shas = {item.sha256 for item in plan.to_embed}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_stat_and_hash, to_hash)
        for item in tqdm(results, total=len(to_hash), desc="hashing", unit="file",
                         disable=not progress or not to_hash):
            if item.error:
                plan.unreadable.append(item)
            elif item.sha256 in new_shas:
                plan.pending_aliases.setdefault(item.sha256, []).append(item)
            elif item.sha256 in known_shas:
                plan.aliases.append(item)
            else:
                plan.to_embed.append(item)
                new_shas.add(item.sha256)
    return plan
