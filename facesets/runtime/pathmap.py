"""Path mapping between WSL and Windows for queue workers (docs/queue-format.md).

A queue lists paths as WSL sees them. A worker running under Windows opens them as:
  ``/mnt/<drive>/rest``   -> ``<DRIVE>:\\rest``                    (native NTFS, fast)
  any other absolute path -> ``\\\\wsl.localhost\\<distro>\\rest``  (the WSL share)
and an explicit ``--path-map FROM=TO`` (longest FROM first) overrides both. Results always
carry the queue's own paths, so the WSL side never maps back; ``windows_to_wsl`` exists for
paths a user types in Windows form (``--path-map`` targets, model roots).

Names Windows cannot hold (``\\ : * ? " < > |``) are stored by WSL as the private-use
characters U+F000 + code; the mapping applies the same translation. Paths of 260 characters
or more get the ``\\\\?\\`` extended-length prefix so they open without LongPathsEnabled.
"""
from __future__ import annotations

import os
import posixpath
import re

WSL_SHARE = "wsl.localhost"
WINDOWS_MAX_PATH = 260
_NTFS_INVALID = '\\:*?"<>|'
_DRIVE_MOUNT = re.compile(r"^/mnt/([A-Za-z])(?:/(.*))?$")
_WIN_DRIVE = re.compile(r"^([A-Za-z]):[\\/]?(.*)$")
_WIN_SHARE = re.compile(r"^[\\/]{2}(?:wsl\.localhost|wsl\$)[\\/]([^\\/]+)(?:[\\/](.*))?$",
                        re.IGNORECASE)


class PathMapError(ValueError):
    """A path or --path-map rule that cannot be mapped."""


def _escape_component(name: str) -> str:
    """A Linux file name as Windows sees it through WSL (invalid characters -> U+F0xx)."""
    return "".join(chr(0xF000 + ord(c)) if c in _NTFS_INVALID else c for c in name)


def _unescape_component(name: str) -> str:
    return "".join(chr(ord(c) - 0xF000) if 0xF000 < ord(c) <= 0xF07F
                   and chr(ord(c) - 0xF000) in _NTFS_INVALID else c for c in name)


def _long(path: str) -> str:
    """Extended-length form for paths Windows' MAX_PATH would refuse."""
    if len(path) < WINDOWS_MAX_PATH or path.startswith("\\\\?\\"):
        return path
    if path.startswith("\\\\"):
        return "\\\\?\\UNC\\" + path[2:]
    return "\\\\?\\" + path


def _join_windows(prefix: str, rest: str) -> str:
    parts = [_escape_component(p) for p in rest.split("/") if p]
    out = prefix.rstrip("\\/")
    if parts:
        out += "\\" + "\\".join(parts)
    elif re.fullmatch(r"[A-Za-z]:", out):
        out += "\\"
    return _long(out)


def wsl_to_windows(path: str, distro: str | None) -> str:
    """Map an absolute WSL path to the Windows path that opens the same file."""
    if not path.startswith("/"):
        raise PathMapError(f"{path!r}: queue paths must be absolute WSL paths; re-stage "
                           "the queue")
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    m = _DRIVE_MOUNT.match(path)
    if m:
        return _join_windows(f"{m.group(1).upper()}:", m.group(2) or "")
    if not distro:
        raise PathMapError(f"{path}: lives inside WSL but the queue names no WSL distro; "
                           "stage it inside WSL (WSL_DISTRO_NAME set) or pass --path-map "
                           "FROM=TO")
    return _join_windows(f"\\\\{WSL_SHARE}\\{distro}", path)


def windows_to_wsl(path: str) -> str:
    """Map a Windows path (``C:\\...``, ``\\\\wsl.localhost\\<distro>\\...``) to WSL's view."""
    p = path
    if p.startswith("\\\\?\\UNC\\"):
        p = "\\\\" + p[8:]
    elif p.startswith("\\\\?\\"):
        p = p[4:]
    m = _WIN_DRIVE.match(p)
    if m:
        head = f"/mnt/{m.group(1).lower()}"
        rest = m.group(2)
    else:
        m = _WIN_SHARE.match(p)
        if not m:
            raise PathMapError(f"{path!r}: not a drive path (C:\\...) or a WSL share path "
                               "(\\\\wsl.localhost\\<distro>\\...)")
        head, rest = "", m.group(2) or ""
    parts = [_unescape_component(c) for c in re.split(r"[\\/]+", rest) if c]
    return head + "/" + "/".join(parts) if parts else (head or "/")


def parse_rule(rule: str) -> tuple[str, str]:
    """``FROM=TO`` (split at the first '='): FROM a WSL path prefix, TO a local prefix."""
    src, sep, dst = rule.partition("=")
    if not sep or not src or not dst:
        raise PathMapError(f"--path-map {rule!r}: expected FROM=TO, e.g. "
                           "/home/me/photos=D:\\photos")
    if not src.startswith("/"):
        src = windows_to_wsl(src)
    return posixpath.normpath(src), dst


def _is_windows_style(prefix: str) -> bool:
    return bool(_WIN_DRIVE.match(prefix)) or prefix.startswith("\\\\")


class PathMapper:
    """Maps queue (WSL) paths to the paths this worker opens.

    ``windows`` is whether the worker runs under Windows (auto mapping applies there only);
    rules from ``--path-map`` apply everywhere.
    """

    def __init__(self, distro: str | None = None, rules: list[str] | None = None,
                 windows: bool | None = None):
        self.distro = distro
        self.windows = (os.name == "nt") if windows is None else windows
        parsed = [parse_rule(r) for r in rules or []]
        self.rules = sorted(parsed, key=lambda r: len(r[0]), reverse=True)

    def __call__(self, path: str) -> str:
        norm = posixpath.normpath(path) if path.startswith("/") else path
        for src, dst in self.rules:
            if norm == src or norm.startswith(src.rstrip("/") + "/"):
                rest = norm[len(src):].lstrip("/")
                if _is_windows_style(dst):
                    return _join_windows(dst, rest)
                return posixpath.join(dst, rest) if rest else dst
        if self.windows:
            return wsl_to_windows(path, self.distro)
        return path

    def describe(self) -> str:
        rules = ", ".join(f"{s}={d}" for s, d in self.rules)
        auto = f"WSL->Windows (distro {self.distro or '?'})" if self.windows else "none"
        return f"path mapping: {auto}" + (f"; rules {rules}" if rules else "")
