"""File-system safety helpers used everywhere: atomic writes, the lock, reversible moves.

Every file face-sets writes (cache segments, manifests, bundles) goes through
``atomic_write``: a temp file in the same folder, fsync, ``os.replace``, fsync of the folder.
A reader therefore sees the old file or the new one, never a truncated one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator


# Fault injection (docs/design.md, "Fault injection"), read once per process: a kill harness
# counts the commits of a run (FACESETS_COMMIT_LOG) and kills a run right after its N-th
# commit (FACESETS_KILL_AT_COMMIT). Unset, ``commit_point`` is one flag check.
_KILL_AT_COMMIT = int(os.environ.get("FACESETS_KILL_AT_COMMIT") or 0)
_COMMIT_LOG = os.environ.get("FACESETS_COMMIT_LOG") or ""
_FAULT_INJECTION = bool(_KILL_AT_COMMIT or _COMMIT_LOG)
_commits = 0


def commit_point(what: str) -> None:
    """Mark that a file was just committed (renamed into place, moved); ``what`` names it."""
    if not _FAULT_INJECTION:
        return
    global _commits
    _commits += 1
    if _COMMIT_LOG:
        with open(_COMMIT_LOG, "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(f"{_commits}\t{what.replace(chr(10), ' ').replace(chr(9), ' ')}\n")
    if _commits == _KILL_AT_COMMIT:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content (streamed: big files are never read whole)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class LockError(RuntimeError):
    """Another process holds the lock."""


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside ``path``; on success fsync it and replace ``path`` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    commit_point(os.fspath(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (UTF-8, indented, keys in insertion order)."""
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a clear ValueError names the file when it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); restore it or re-run the step "
                         "that writes it") from None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie awaiting its parent counts as dead)."""
    if os.name == "nt":
        # os.kill(pid, 0) would TerminateProcess on Windows: ask the kernel instead
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        try:
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        finally:
            kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class FileLock:
    """An exclusive lock file (``O_EXCL``) holding pid, host and start time.

    Portable to network shares and WSL's /mnt/c, where ``flock`` is unreliable. A lock left
    by a process that died on this host (kill -9) is detected by its pid and taken over.
    """

    def __init__(self, path: str | os.PathLike, what: str = "this file"):
        self.path = Path(path)
        self.what = what
        self.held = False

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == info["host"] and \
                        isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)  # stale: its owner died without releasing
                    continue
                who = (f"pid {holder.get('pid')} on {holder.get('host')} since "
                       f"{holder.get('started')}") if holder else "an unknown process"
                raise LockError(f"{self.what} is in use by {who} (lock file {self.path}); "
                                "wait for it to finish, or delete the lock file if that "
                                "process is gone") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            self.held = True
            return self
        raise LockError(f"could not take the lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def reversible_move(src: str | os.PathLike, holding_dir: str | os.PathLike) -> Path:
    """Move ``src`` into ``holding_dir`` (``_dropped/``, ``_masked/``, ``_merged/``...).

    Never overwrites: a name already taken there gets a numeric suffix. Returns the new path.
    """
    src = Path(src)
    holding = Path(holding_dir)
    holding.mkdir(parents=True, exist_ok=True)
    dest = holding / src.name
    n = 1
    while dest.exists():
        dest = holding / f"{src.stem}.{n}{src.suffix}"
        n += 1
    shutil.move(os.fspath(src), os.fspath(dest))
    commit_point(f"{src} -> {dest}")
    return dest


def replace_dir(staging: str | os.PathLike, final: str | os.PathLike,
                is_ours: Callable[[Path], bool] | None = None) -> None:
    """Swap a fully built ``staging`` folder in as ``final``.

    The old ``final`` is renamed aside first and removed only after the new one is in place,
    so a crash leaves either the old or the new output under ``final`` (plus a leftover
    ``.old`` folder that the next run removes). ``is_ours`` guards against replacing a folder
    this tool did not make.
    """
    staging, final = Path(staging), Path(final)
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        if is_ours is not None and not is_ours(final):
            raise FileExistsError(f"{final} exists and was not made by face-sets; "
                                  "choose an empty or new output folder")
        os.replace(final, old)
    os.replace(staging, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
