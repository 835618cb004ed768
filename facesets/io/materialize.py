"""Placing source photos into output folders: stable flattened names and link modes."""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

from .fsutil import DISK_FULL_ERRNOS, commit_point, disk_full, write_point

LINK_MODES = ("copy", "hardlink", "symlink")
_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def flat_name(abs_path: str, parts: int = 3, max_len: int = 120) -> str:
    """A stable, collision-free file name for a source path.

    The last ``parts`` path components joined with ``__`` (unsafe characters -> ``_``),
    plus 10 hex digits of the sha1 of the whole absolute path: the same file gets the same
    name in every run, whatever folder was passed as SRC, and two paths never collide.
    """
    p = Path(os.path.abspath(abs_path))
    stem_parts = list(p.parent.parts[1:])[-(parts - 1):] + [p.stem] if parts > 1 else [p.stem]
    stem = "__".join(_UNSAFE.sub("_", s).strip("_") or "_" for s in stem_parts)
    digest = hashlib.sha1(str(p).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{stem[-max_len:]}__{digest}{p.suffix.lower()}"


# a photo face-sets placed (flat_name): the only names whose leftover temp files it removes
FLAT_NAME = re.compile(r".+__[0-9a-f]{10}(\.\w+)?")


def place(src: str, dest: Path, link: str = "copy") -> None:
    """Put ``src`` at ``dest`` by copy, hard link or symlink: made under a temp name
    (``.NAME.XXXXXXXX.tmp``, as fsutil.atomic_write names them) and renamed into place, so a
    kill never leaves a partial file under ``dest`` (only a temp file the next run removes)."""
    if link not in LINK_MODES:
        raise ValueError(f"unknown link mode {link!r}; choose from {', '.join(LINK_MODES)}")
    tmp = dest.with_name(f".{dest.name}."
                         + "".join(secrets.choice(_TEMP_CHARS) for _ in range(8)) + ".tmp")
    try:
        write_point(dest)
        if link == "copy":
            shutil.copy2(src, tmp)
        elif link == "hardlink":
            try:
                os.link(src, tmp)
            except OSError as exc:
                raise OSError(f"cannot hard-link {src} into {dest.parent} ({exc.strerror}); "
                              "source and output must be on one file system: use --link "
                              "copy or --link symlink") from None
        else:
            os.symlink(os.path.abspath(src), tmp)
        os.replace(tmp, dest)
        commit_point(os.fspath(dest))
    except BaseException as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            raise disk_full(dest) from None   # named on the file placed, not its temp name
        raise


_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def place_all(paths: list[str], folder: Path, link: str) -> tuple[list[str], list[str]]:
    """Place every location of one photo (canonical + aliases) into ``folder``.

    Returns (names placed, paths missing on disk). A name already there is not placed again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    placed, missing = [], []
    for src in paths:
        name = flat_name(src)
        dest = folder / name
        if not os.path.exists(src):
            missing.append(src)
            continue
        if not dest.exists() and not dest.is_symlink():
            place(src, dest, link)
        placed.append(name)
    return placed, missing
