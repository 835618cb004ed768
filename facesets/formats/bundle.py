"""``.fsz`` face-set bundles as roop-unleashed reads them: a zip of ``0.png``, ``1.png``, ...

The consumer unzips a bundle, keeps only the PNG members, re-detects every face in each and
averages their embeddings. ``write_fsz`` makes bundles (atomic, byte-for-byte reproducible:
stored members, fixed timestamps); ``read_fsz`` opens one as the consumer would, treating the
zip as untrusted input (see docs/manifest-format.md, "Swap-ready export").
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..io.fsutil import atomic_write

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# limits for reading untrusted bundles: a real bundle holds tens of ~0.5 MB PNGs
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 64 << 20      # one PNG, uncompressed
MAX_TOTAL_BYTES = 2 << 30        # all PNGs together, uncompressed
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)   # zip's epoch: the same input gives the same bytes
_MEMBER_RE = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


class BundleError(ValueError):
    """A file that is not a usable .fsz bundle (not a zip, unsafe member, too large)."""


@dataclass
class FszContents:
    path: str
    pngs: list[tuple[str, bytes]] = field(default_factory=list)   # (member name, data)
    skipped: list[str] = field(default_factory=list)              # non-PNG members


def write_fsz(png_paths: list[str | os.PathLike], dest: str | os.PathLike) -> Path:
    """Write ``dest`` as a zip of ``0.png``, ``1.png``, ... holding ``png_paths`` in order."""
    dest = Path(dest)
    with atomic_write(dest, "wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, src in enumerate(png_paths):
                info = zipfile.ZipInfo(f"{i}.png", date_time=_FIXED_TIME)
                info.external_attr = 0o644 << 16
                zf.writestr(info, Path(src).read_bytes())
    return dest


def _safe_member(name: str) -> bool:
    """A plain file name: no folders, no absolute path, no drive, no parent reference."""
    return bool(name) and "/" not in name and "\\" not in name and ":" not in name \
        and name not in (".", "..") and not name.startswith("\x00")


def read_fsz(path: str | os.PathLike) -> FszContents:
    """Read the PNG members of a bundle (numeric names in number order, then the rest).

    Members that are not PNG files are skipped (the consumer ignores them too); a member with
    a path (folders, ``..``, absolute), a zip bomb or a non-zip raises BundleError.
    """
    path = Path(path)
    out = FszContents(path=str(path))
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such bundle") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path}: not a .fsz bundle (not a readable zip: {exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise BundleError(f"{path}: {len(infos)} members (limit {MAX_MEMBERS}); "
                              "not a face-set bundle")
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            if not _safe_member(info.filename):
                raise BundleError(f"{path}: unsafe member name {info.filename!r} (folders or "
                                  "path traversal); refusing this bundle")
            if not info.filename.lower().endswith(".png"):
                out.skipped.append(info.filename)
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                raise BundleError(f"{path}: member {info.filename} is {info.file_size} bytes "
                                  f"(limit {MAX_MEMBER_BYTES}); refusing this bundle")
            total += info.file_size
            if total > MAX_TOTAL_BYTES:
                raise BundleError(f"{path}: more than {MAX_TOTAL_BYTES} bytes uncompressed; "
                                  "refusing this bundle")
            try:
                with zf.open(info) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)  # never trust the header's size
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
                raise BundleError(f"{path}: member {info.filename} unreadable ({exc})") from None
            if len(data) > MAX_MEMBER_BYTES:
                raise BundleError(f"{path}: member {info.filename} inflates past "
                                  f"{MAX_MEMBER_BYTES} bytes; refusing this bundle")
            if not data.startswith(PNG_SIGNATURE):
                out.skipped.append(info.filename)
                continue
            out.pngs.append((info.filename, data))

    def order(item):
        m = _MEMBER_RE.match(item[0])
        return (0, int(m.group(1)), "") if m else (1, 0, item[0])
    out.pngs.sort(key=order)
    return out
