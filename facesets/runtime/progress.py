"""The one place that decides how progress is shown.

On a terminal: tqdm's bar (redrawn in place). Anywhere else (a chain's log file, a pipe, a
Windows worker whose output is captured): a bar's redraws are hundreds of useless lines, so
a plain line every ``PLAIN_EVERY_S`` seconds (``FACESETS_PROGRESS_EVERY`` overrides it) with
the count, the rate and the ETA, and one last line when the work ends.

``progress_bar(total=..., desc=..., unit=..., disable=...)`` takes tqdm's common arguments
and returns an object with tqdm's ``update``, ``close``, iteration and ``with`` use.
Importable with the queue worker's minimal requirements (tqdm only).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, TextIO

PLAIN_EVERY_S = 30.0


def _every_s() -> float:
    raw = os.environ.get("FACESETS_PROGRESS_EVERY", "")
    try:
        value = float(raw)
    except ValueError:
        return PLAIN_EVERY_S
    return value if value >= 0 and value == value and value != float("inf") else PLAIN_EVERY_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class PlainProgress:
    """tqdm's interface, printing ``desc: n/total (p%), r unit/s, ETA t`` lines at most every
    ``every`` seconds, and a last line on close."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None,
                 desc: str = "", unit: str = "it", disable: bool = False,
                 file: TextIO | None = None, every: float | None = None, **_ignored: Any):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable = bool(disable)
        self.file = file if file is not None else sys.stderr
        self.every = _every_s() if every is None else every
        self.n = 0
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.n / elapsed
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            text = f"{head}{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
        else:
            text = f"{head}{self.n}"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        return text + f", elapsed {_duration(elapsed)}"

    def _print(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable and time.monotonic() - self.last >= self.every:
            self._print()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.n:
            self._print()

    def set_postfix_str(self, *_a, **_k) -> None:
        pass

    def set_postfix(self, *_a, **_k) -> None:
        pass

    def __iter__(self):
        for value in self.iterable:
            yield value
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """tqdm on a terminal, ``PlainProgress`` lines elsewhere (see the module docstring)."""
    if is_terminal(kwargs.get("file")):
        from tqdm import tqdm

        if kwargs.get("disable") is None:   # tqdm's "off when not a TTY": it is one
            kwargs["disable"] = False
        return tqdm(iterable, **kwargs)
    if kwargs.get("disable") is None:
        kwargs["disable"] = False
    return PlainProgress(iterable, **kwargs)
