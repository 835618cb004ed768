"""File-system safety helpers used everywhere: atomic writes, the lock, reversible moves.

Every file face-sets writes (cache segments, manifests, bundles) goes through
``atomic_write``: a temp file in the same folder, fsync, ``os.replace``, fsync of the folder.
A reader therefore sees the old file or the new one, never a truncated one.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
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
# ... and a full disk: the N-th write (``write_point``) and every later one raise ENOSPC
# (FACESETS_FAIL_AT_WRITE), as a disk that filled up at that moment would
_FAIL_AT_WRITE = int(os.environ.get("FACESETS_FAIL_AT_WRITE") or 0)
_writes = 0


def _current_umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


# The process umask, read once at import (os.umask can only be read by setting it): the files
# atomic_write makes get the mode plain open() would give them (mkstemp's is 0600); folders
# are made with mkdir, which applies the umask itself.
UMASK = _current_umask()
FILE_MODE = 0o666 & ~UMASK

# errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e)


class UnsafePathError(ValueError):
    """A folder face-sets would write in is a symlink it did not make."""


def disk_full(path: str | os.PathLike) -> OSError:
    """The error of a full disk while writing ``path`` (cli prints it as one line)."""
    return OSError(errno.ENOSPC, "no space left on device", os.fspath(path))


def error_line(exc: BaseException) -> str | None:
    """The one line (without "error: ") for an OSError of a full disk or an exhausted quota;
    None for any other error. Names the file written: shutil's copies name the source first
    and the destination second."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_FULL_ERRNOS:
        return None
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    return f"{os.fsdecode(path) if path is not None else '(a file being written)'}: " \
           "no space left on device"


def write_point(what: str | os.PathLike) -> None:
    """Called before each file or folder face-sets writes: the fault-injection hook of a full
    disk (``FACESETS_FAIL_AT_WRITE``; unset, one flag check)."""
    if not _FAIL_AT_WRITE:
        return
    global _writes
    _writes += 1
    if _writes >= _FAIL_AT_WRITE:
        raise disk_full(what)


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


def _refuse_symlink(p: Path) -> None:
    if p.is_symlink():
        raise UnsafePathError(f"{p}: is a symlink; face-sets never writes through a symlink it "
                              "did not make: remove it, or choose another output folder")


def internal_dir(root: str | os.PathLike, rel: str | os.PathLike = "",
                 create: bool = True) -> Path:
    """Make (or, ``create=False``, only check what exists of) ``root/rel``, a folder
    face-sets keeps inside an output (``_thumbs``, ``.runs``, ``_split``, ``faces/_dropped``
    ...), and return it. Refused (UnsafePathError) when it or any folder between ``root`` and
    it is a symlink: writes never follow a link out of the output. ``root`` itself, the
    folder the user chose, may be a symlink."""
    root = Path(root)
    rel = Path(rel)
    if rel.is_absolute():
        rel = rel.relative_to(root)
    if create and not root.is_dir():
        write_point(root)
        root.mkdir(parents=True, exist_ok=True)
    here = root
    for part in rel.parts:
        if part in ("", "."):
            continue
        here = here / part
        _refuse_symlink(here)
        if create and not here.is_dir():
            write_point(here)
            here.mkdir(exist_ok=True)
            _refuse_symlink(here)   # raced in by another process meanwhile
    return here


def _disk_full_as_oserror(exc: BaseException, path: Path) -> BaseException:
    """A full disk while writing ``path`` as an OSError naming it (a write() error names no
    file)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS and exc.filename is None:
        return disk_full(path)
    return exc


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb",
                 root: str | os.PathLike | None = None) -> Iterator[Any]:
    """Open a temp file beside ``path``; on success fsync it and replace ``path`` with it.

    The file gets the umask's mode (mkstemp's would be 0600). With ``root`` (the output
    folder), the folders between it and ``path`` are made with ``internal_dir``: a symlink
    among them is refused."""
    path = Path(path)
    if root is not None:
        internal_dir(root, path.parent.relative_to(root))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_point(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _disk_full_as_oserror(exc, path) from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        mapped = _disk_full_as_oserror(exc, path)
        if mapped is not exc:
            raise mapped from None
        raise
    commit_point(os.fspath(path))


def write_new_file(path: str | os.PathLike, data: bytes) -> None:
    """Write a file inside a folder being built (a staging or ``.partial`` folder nothing
    reads before it is renamed into place): a plain write, a full disk named on ``path``."""
    path = Path(path)
    write_point(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise _disk_full_as_oserror(exc, path) from None


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """shutil.copy2 with a full disk reported on ``dest`` (and the fault-injection hook)."""
    write_point(dest)
    try:
        shutil.copy2(src, dest)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise disk_full(dest) from None
        raise


def write_image(path: str | os.PathLike, image, ext: str = ".png", params=(),
                root: str | os.PathLike | None = None) -> None:
    """Encode ``image`` (cv2) and write it atomically: a failed write is an OSError naming
    the file (cv2.imwrite only returns False and prints a libpng error)."""
    import cv2

    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise OSError(f"{path}: could not encode the image")
    with atomic_write(path, "wb", root=root) as fh:
        fh.write(buf.tobytes())


def atomic_write_bytes(path: str | os.PathLike, data: bytes,
                       root: str | os.PathLike | None = None) -> None:
    with atomic_write(path, "wb", root=root) as fh:
        fh.write(data)


def json_bytes(obj: Any, indent: int | None = 2) -> bytes:
    """The one JSON encoding of a file face-sets writes: UTF-8, keys in insertion order, and
    never NaN or Infinity (a ValueError: JSON has no such numbers, readers reject them).

    A path with bytes that are not UTF-8 reaches Python as lone surrogates ("\\udce9"):
    such a document is written with \\u escapes, which read back to the same path."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, indent=indent, ensure_ascii=True, allow_nan=False).encode("ascii")


def atomic_write_json(path: str | os.PathLike, obj: Any,
                      root: str | os.PathLike | None = None) -> None:
    """Write JSON atomically (``json_bytes``, indented, a final newline)."""
    atomic_write_bytes(path, json_bytes(obj) + b"\n", root=root)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a clear ValueError names the file when it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); restore it or re-run the step "
                         "that writes it") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); restore it or re-run "
                         "the step that writes it") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a file face-sets wrote; restore it "
                         "or re-run the step that writes it") from None


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


# a live writer fills its lock file right after creating it: content still unreadable after
# this long comes from a writer killed in between (or from tampering)
LOCK_UNREADABLE_AFTER_S = 10.0
# command lines of face-sets processes (entry points and the package)
_FACESETS_MARKERS = ("sort_faces", "facesets", "embed_worker")


def _lock_open_elsewhere(path: Path) -> bool | None:
    """Whether another process has ``path`` open (a holder keeps its lock file open).

    True/False on Linux (from /proc); None where that cannot be known: no /proc, or a
    face-sets process whose open files this user may not see.
    """
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    me = os.getpid()
    unknown = False
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except PermissionError:
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            unknown = unknown or any(m.encode() in cmdline for m in _FACESETS_MARKERS)
            continue
        except OSError:
            continue  # exited meanwhile
        for fd in fds:
            try:
                fst = os.stat(f"/proc/{entry.name}/fd/{fd}")
            except OSError:
                continue
            if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
                return True
    return None if unknown else False


class FileLock:
    """An exclusive lock file (``O_EXCL``) holding pid, host and start time.

    Portable to network shares and WSL's /mnt/c, where ``flock`` is unreliable. The holder
    keeps the file open while it holds the lock. A lock is taken over only when provably
    stale: its holder died on this host (kill -9), or its content cannot be parsed (a
    writer killed between creating and filling it, or tampering), it is older than
    ``LOCK_UNREADABLE_AFTER_S`` and no process has it open. A take-over is said in one line.
    """

    def __init__(self, path: str | os.PathLike, what: str = "this file",
                 log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.what = what
        self.held = False
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                judged = self._stale_reason(info["host"])
                if judged is None:
                    continue  # it vanished meanwhile: try again
                why, seen = judged
                try:
                    now = os.stat(self.path)
                    if (now.st_ino, now.st_mtime_ns) != (seen.st_ino, seen.st_mtime_ns):
                        continue  # replaced since it was judged (another taker): judge again
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                except PermissionError:  # Windows: a live holder has it open
                    raise LockError(f"{self.what} is in use (lock file {self.path} is open in "
                                    "another process); wait for it to finish") from None
                self.log(f"note: took over the lock {self.path}: {why}")
                continue
            try:
                os.write(fd, json.dumps(info, allow_nan=False).encode())
                os.fsync(fd)
            except BaseException as exc:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise _disk_full_as_oserror(exc, self.path) from None
            self._fd = fd
            self.held = True
            return self
        raise LockError(f"could not take the lock {self.path}; try again")

    def _stale_reason(self, host: str) -> tuple[str, os.stat_result] | None:
        """Why the existing lock is stale (and its stat as judged); LockError when it may be
        live; None when it vanished meanwhile."""
        t0 = time.monotonic()
        while True:
            try:
                st = os.stat(self.path)
                with open(self.path, "rb") as fh:
                    raw = fh.read(4096)
            except FileNotFoundError:
                return None
            holder = _parse_lock(raw)
            if holder is not None:
                if holder["host"] == host and not _pid_alive(holder["pid"]):
                    return f"its holder, pid {holder['pid']}, is no longer running", st
                raise LockError(f"{self.what} is in use by pid {holder['pid']} on "
                                f"{holder['host']} since {holder.get('started')} (lock file "
                                f"{self.path}); wait for it to finish, or delete the lock "
                                "file if that process is gone")
            # unparsable for this long (by its mtime, or as watched here when its mtime is
            # in the future) cannot be a live writer about to fill it
            age = max(time.time() - st.st_mtime, time.monotonic() - t0)
            if age >= LOCK_UNREADABLE_AFTER_S:
                break
            time.sleep(min(0.2, LOCK_UNREADABLE_AFTER_S - age))
        what = "is empty" if not raw.strip() else "cannot be parsed (not pid and host)"
        open_elsewhere = _lock_open_elsewhere(self.path)
        if open_elsewhere is False:
            return f"its content {what}, it is {age:.0f} s old and no process has it open", st
        held = "is open in another process" if open_elsewhere else \
            "may be held by a face-sets process this user cannot inspect"
        raise LockError(f"{self.what} is locked: the content of lock file {self.path} {what} "
                        f"and it {held}; "
                        "wait for it to finish, or delete the lock file if no face-sets "
                        "is running")

    def release(self) -> None:
        if self.held:
            if self._fd is not None:
                os.close(self._fd)  # before unlink: Windows cannot delete an open file
                self._fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _parse_lock(raw: bytes) -> dict | None:
    """A lock file's holder when its content is well formed: pid (int) and host (str)."""
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(holder, dict) or type(holder.get("pid")) is not int \
            or not isinstance(holder.get("host"), str) or holder["pid"] <= 0:
        return None
    return holder


def reversible_move(src: str | os.PathLike, holding_dir: str | os.PathLike) -> Path:
    """Move ``src`` into ``holding_dir`` (``_dropped/``, ``_masked/``, ``_merged/``...).

    Never overwrites: a name already taken there gets a numeric suffix. Returns the new path.
    """
    src = Path(src)
    holding = Path(holding_dir)
    _refuse_symlink(holding)   # a holding folder is always face-sets' own
    holding.mkdir(parents=True, exist_ok=True)
    dest = holding / src.name
    n = 1
    while dest.exists():
        dest = holding / f"{src.stem}.{n}{src.suffix}"
        n += 1
    shutil.move(os.fspath(src), os.fspath(dest))
    commit_point(f"{src} -> {dest}")
    return dest


# A folder face-sets builds or sets aside lives in a hidden, unique sibling it made itself
# (".NAME.facesets-XXXXXX/") holding this marker: only such folders are ever removed.
OWNED_PREFIX = ".facesets-"
OWNED_MARKER = ".facesets-owned"


def _owned_dir(final: Path, role: str) -> Path:
    """A fresh hidden folder beside ``final`` that carries face-sets' ownership marker
    (``role``: "staging" for a new output being built, "aside" for the old one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    write_point(final)
    holder = Path(tempfile.mkdtemp(prefix=f".{final.name}{OWNED_PREFIX}", dir=final.parent))
    if role == "staging":
        _unfinished.add(holder)   # never "aside": that one holds the old output
    info = {"pid": os.getpid(), "host": socket.gethostname(), "for": final.name, "role": role,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        (holder / OWNED_MARKER).write_text(json.dumps(info, allow_nan=False), encoding="utf-8")
    except OSError as exc:
        shutil.rmtree(holder, ignore_errors=True)
        raise _disk_full_as_oserror(exc, holder / OWNED_MARKER) from None
    return holder


# Folders this process is building (staging folders, ``.partial`` folders) that a command
# failing half-way removes (``discard_unfinished``, called by cli.main): a re-run then
# starts as clean as a first run. A folder renamed into place is simply no longer there.
_unfinished: set[Path] = set()


def remove_on_error(folder: str | os.PathLike) -> Path:
    """Note a folder this process is about to build and renames into place when done
    (``X.partial``): ``discard_unfinished`` removes it if the command fails before."""
    folder = Path(folder)
    _unfinished.add(folder)
    return folder


def discard_unfinished() -> None:
    """Remove what ``remove_on_error`` and ``make_staging`` noted and is still there (a
    failed command's half-built folders; never a symlink, never a folder renamed into
    place)."""
    for folder in sorted(_unfinished, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
    _unfinished.clear()


def _owner(holder: Path) -> dict | None:
    """The marker of a folder face-sets made, or None when it is not one of ours."""
    try:
        info = json.loads((holder / OWNED_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _remove_owned(holder: Path) -> None:
    """rmtree ``holder`` only when it carries face-sets' marker."""
    if _owner(holder) is not None:
        shutil.rmtree(holder, ignore_errors=True)


def remove_stale_staging(final: str | os.PathLike) -> None:
    """Remove the staging / set-aside folders of ``final`` left by a killed run: only hidden
    siblings face-sets made (marker inside) whose process is gone."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    host = socket.gethostname()
    for holder in final.parent.glob(f".{glob.escape(final.name)}{OWNED_PREFIX}*"):
        info = _owner(holder) if holder.is_dir() and not holder.is_symlink() else None
        if info is None:
            continue   # not ours: never touched
        pid = info.get("pid")
        if info.get("host") == host and isinstance(pid, int) and _pid_alive(pid) \
                and pid != os.getpid():
            continue   # a live run is building it
        old = holder / final.name
        if info.get("role") == "aside" and not final.exists() and old.is_dir():
            os.replace(old, final)   # killed between setting the old output aside and
            fsync_dir(final.parent)  # swapping the new one in: the old one comes back
        shutil.rmtree(holder, ignore_errors=True)


def commit_dir(part: str | os.PathLike, final: str | os.PathLike) -> Path:
    """The folder commit: a fully written hidden ``part`` folder (a run's record, new
    facesets built under ``_added/``/``_split/``) becomes ``final`` in one rename, every
    folder in it fsync'd first and ``final``'s parent after, then the commit hook; a kill
    before the rename leaves only ``part`` (nothing refers to it), after it the whole
    folder. ``final`` must not exist."""
    part, final = Path(part), Path(final)
    for d in sorted({q for q in part.rglob("*") if q.is_dir()} | {part}, reverse=True):
        fsync_dir(d)
    os.replace(part, final)
    fsync_dir(final.parent)
    commit_point(os.fspath(final))
    return final


def make_staging(final: str | os.PathLike) -> Path:
    """A fresh folder to build ``final`` in, inside a hidden folder face-sets owns (its
    leftovers from killed runs are removed first); ``replace_dir`` swaps it in."""
    final = Path(final)
    remove_stale_staging(final)
    stage = _owned_dir(final, "staging") / final.name
    stage.mkdir()
    return stage


def replace_dir(staging: str | os.PathLike, final: str | os.PathLike,
                is_ours: Callable[[Path], bool] | None = None) -> None:
    """Swap a fully built ``staging`` folder (from ``make_staging``) in as ``final``.

    The old ``final`` is moved aside into a hidden folder face-sets owns and removed only
    after the new one is in place, so a crash leaves either the old or the new output under
    ``final`` (plus a marked leftover that the next run removes). ``is_ours`` guards against
    replacing a folder this tool did not make. Nothing without face-sets' marker is removed.
    """
    staging, final = Path(staging), Path(final)
    aside = None
    if final.exists():
        if is_ours is not None and not is_ours(final):
            raise FileExistsError(f"{final} exists and was not made by face-sets; "
                                  "choose an empty or new output folder")
        aside = _owned_dir(final, "aside")
        os.replace(final, aside / final.name)
        commit_point(f"{final} -> aside")
    os.replace(staging, final)
    fsync_dir(final.parent)
    commit_point(os.fspath(final))
    _remove_owned(staging.parent)
    if aside is not None:
        _remove_owned(aside)


def output_lock(out: str | os.PathLike) -> FileLock:
    """The lock that keeps two commands off one output folder (``.NAME.facesets.lock``
    beside it, so replacing the folder whole never removes it)."""
    out = Path(os.path.abspath(out))
    return FileLock(out.with_name(f".{out.name}.facesets.lock"), what=f"output folder {out}")


def remove_temp_files(folder: str | os.PathLike, target: "re.Pattern[str]") -> list[Path]:
    """Remove the temp files ``atomic_write`` left in ``folder`` when a kill interrupted
    the write of a file whose name fully matches ``target`` (``.NAME.XXXXXXXX.tmp``, the
    mkstemp name it uses); nothing else is touched. Returns what was removed."""
    import re

    temp = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = temp.fullmatch(p.name)
        if m and target.fullmatch(m.group(1)) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            removed.append(p)
    return removed
