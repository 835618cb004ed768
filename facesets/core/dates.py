"""Capture dates of the photos a step needs, read once and kept beside the cache.

``capture_dates`` answers from CACHE.dates.json (formats/eras.py) and reads only the photos
it does not know yet (their EXIF header, a few threads at once), adding them to the file as
it goes (every ``SAVE_EVERY`` seconds and at the end), so a re-run after a parameter change
reads no photo at all and a run a kill interrupted keeps what it had read.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..runtime.progress import progress_bar

from ..formats.eras import dates_path, load_dates, write_dates
from ..io.capture_date import Unreadable, capture_date

SAVE_EVERY = 30.0    # seconds between saves of the side file while reading
READ_THREADS = 4     # EXIF headers are small reads: I/O bound


@dataclass
class Dates:
    """sha256 -> capture date (None: no usable date) of the photos asked for."""
    dates: dict[str, str | None] = field(default_factory=dict)
    path: Path | None = None
    known: int = 0          # answered from the side file
    read: int = 0           # read from the photos now
    unreadable: int = 0     # could not be opened (not recorded: tried again next time)

    def year(self, sha: str) -> int | None:
        d = self.dates.get(sha)
        return int(d[:4]) if d else None

    def line(self) -> str:
        dated = sum(1 for d in self.dates.values() if d)
        return (f"capture dates: {len(self.dates)} photos, {dated} dated, "
                f"{len(self.dates) - dated} undated; {self.known} from {self.path}, "
                f"{self.read} read now" + (f", {self.unreadable} unreadable (tried again "
                                           "next time)" if self.unreadable else ""))


def _read_one(paths: list[str]) -> tuple[str | None, bool]:
    """(date, readable) of a photo from the first of its paths that opens."""
    for p in paths:
        if not os.path.isfile(p):
            continue
        try:
            return capture_date(p), True
        except Unreadable:
            continue
    return None, False


def capture_dates(cache_path: str | os.PathLike, locations: dict[str, list[str]],
                  shas: Iterable[str], progress: bool = True) -> Dates:
    """The capture date of every photo ``shas`` (sha256; ``locations`` gives its paths),
    from the side file beside ``cache_path`` or read now and added to it."""
    path = dates_path(cache_path)
    stored = load_dates(path)
    wanted = sorted(set(shas))
    out = Dates(path=path)
    todo = [s for s in wanted if s not in stored]
    out.known = len(wanted) - len(todo)
    out.dates = {s: stored[s] for s in wanted if s in stored}
    if not todo:
        return out
    new: dict[str, str | None] = {}
    last = time.monotonic()

    def save() -> None:
        merged = load_dates(path)     # what another run added meanwhile is kept
        merged.update(new)
        write_dates(path, merged)

    bar = progress_bar(total=len(todo), desc="capture dates", unit="photo",
                       disable=not progress)
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for sha, (date, ok) in zip(todo, pool.map(lambda s: _read_one(locations.get(s, [])),
                                                  todo)):
            out.dates[sha] = date
            if ok:
                new[sha] = date
                out.read += 1
            else:
                out.unreadable += 1
            bar.update(1)
            if time.monotonic() - last > SAVE_EVERY:
                save()
                last = time.monotonic()
    bar.close()
    if new:
        save()
    return out
