"""A folder tree of photo files as a photo source, and the cheap part of embed (the WSL side
of a queue): listing and hashing.

``FolderSource`` is the ``PhotoSource`` (sources/base.py) over ``scan_source``: its ids are
absolute file paths.

``plan_embed`` decides, against a cache, which listed files are unchanged (skipped without
hashing: same size and mtime as recorded), which are copies of known content (aliases) and
which are new content to embed. Both in-process embed and queue staging use it.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.progress import progress_bar

from ..formats.cache import FaceCache
from ..formats.manifest import holds_face_sets_manifest
from ..io.fsutil import sha256_file
from ..io.imageio import IMAGE_EXTENSIONS
from .base import PhotoSource, SourceItem

SKIP_DIRS = {"@eaDir", "#recycle", "$RECYCLE.BIN"}  # NAS thumbnails, recycle bins
# photo formats embed cannot read yet: counted and reported, not silently passed over
UNSUPPORTED_EXTENSIONS = {".jxl"}


@dataclass
class SourceScan:
    """What listing a photo source found, and what it skipped (reported by embed)."""

    images: list[str] = field(default_factory=list)
    face_sets_outputs: list[str] = field(default_factory=list)   # folders face-sets wrote
    unsupported: dict[str, int] = field(default_factory=dict)    # extension -> files
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason)
    loops: list[str] = field(default_factory=list)   # symlinked folders already listed

    def skipped_lines(self, src: str) -> list[str]:
        """One line per kind of thing skipped, for the embed summary."""
        lines = []
        if self.face_sets_outputs:
            lines.append(f"skipped {len(self.face_sets_outputs)} folders written by "
                         f"face-sets: {', '.join(self.face_sets_outputs)}")
        if self.unsupported:
            kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(self.unsupported.items()))
            lines.append(f"skipped {sum(self.unsupported.values())} files in formats embed "
                         f"cannot read yet ({kinds})")
        for folder, reason in self.unreadable:
            lines.append(f"skipped unreadable folder {folder} ({reason})")
        if self.loops:
            lines.append(f"skipped {len(self.loops)} symlinked folders already listed: "
                         f"{', '.join(self.loops)}")
        if not self.images:
            lines.append(f"no photos found in {src} (extensions "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        return lines


def scan_source(src: str) -> SourceScan:
    """List the image files under ``src`` (recursive, sorted, extension match is
    case-insensitive) and record what was skipped. Symlinked folders are followed, each real
    folder once. Hidden folders (``.name``), NAS thumbnail folders and folders face-sets
    wrote (they hold its manifest: an output inside SRC) are skipped."""
    src = os.path.abspath(src)
    found = SourceScan()
    if os.path.isfile(src):
        if os.path.splitext(src)[1].lower() in IMAGE_EXTENSIONS:
            found.images.append(src)
        return found
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: no such folder; pass the folder of photos to embed")
    seen_dirs: set[tuple[int, int]] = set()

    def first_visit(path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError as exc:
            found.unreadable.append((path, exc.strerror or type(exc).__name__))
            return False
        if (st.st_dev, st.st_ino) in seen_dirs:
            found.loops.append(path)
            return False
        seen_dirs.add((st.st_dev, st.st_ino))
        return True

    def unreadable(exc: OSError) -> None:
        found.unreadable.append((exc.filename or "?", exc.strerror or type(exc).__name__))

    first_visit(src)
    for root, dirs, files in os.walk(src, onerror=unreadable, followlinks=True):
        keep = []
        for d in sorted(dirs):
            path = os.path.join(root, d)
            if d.startswith(".") or d in SKIP_DIRS:
                continue
            if holds_face_sets_manifest(Path(path)):
                found.face_sets_outputs.append(path)
            elif first_visit(path):
                keep.append(d)
        dirs[:] = keep
        for name in files:
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                found.images.append(os.path.join(root, name))
            elif ext in UNSUPPORTED_EXTENSIONS:
                found.unsupported[ext] = found.unsupported.get(ext, 0) + 1
    found.images.sort()
    return found


def list_images(src: str) -> list[str]:
    """Absolute paths of the image files under ``src`` (see ``scan_source``)."""
    return scan_source(src).images


def read_file(path: str) -> bytes:
    """The whole file (a folder item's bytes)."""
    with open(path, "rb") as fh:
        return fh.read()


class FolderSource(PhotoSource):
    """The photo files under a folder (or one file), listed by ``scan_source``; the listing is
    made once, on first use."""

    kind = "folder"

    def __init__(self, src: str):
        self.src = src   # as given: the summary names it so
        self._scan: SourceScan | None = None

    @property
    def scan(self) -> SourceScan:
        if self._scan is None:
            self._scan = scan_source(self.src)
        return self._scan

    def list_ids(self) -> list[str]:
        return self.scan.images

    def item(self, item_id: str) -> SourceItem:
        st = os.stat(item_id)
        return SourceItem(item_id, st.st_size, st.st_mtime_ns, {"path": item_id})

    def read_bytes(self, item_id: str) -> bytes:
        return read_file(item_id)

    def describe(self) -> dict:
        return {"kind": self.kind, "root": os.path.abspath(self.src)}

    def skipped_lines(self) -> list[str]:
        return self.scan.skipped_lines(self.src)


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
        for item in progress_bar(results, total=len(to_hash), desc="hashing", unit="file",
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
