"""Files and records of ``eras`` (docs/manifest-format.md, "Eras"): the capture-dates side
file beside the cache, era faceset names, and the top-level manifest's ``eras[]`` and
``thin_eras[]`` sections.

CACHE.dates.json (``face-sets/capture-dates`` v1) keeps the EXIF capture date of every photo
``eras`` has looked at, keyed by the photo's sha256 (its content, so a moved or copied photo
is not read again)::

    {"format": "face-sets/capture-dates", "version": 1,
     "tags": ["DateTimeOriginal", "DateTimeDigitized"],
     "dates": {"<sha256>": "1997-06-21T14:02:11", "<sha256>": null, ...}}

A date is the first of ``tags`` the photo has with a plausible value (year 1826 to next
year), as ``YYYY-MM-DDTHH:MM:SS``; ``null`` records a photo that was read and has none, so
it is not read again either. A photo that could not be read at all is not recorded (the
next run tries again).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ..io.fsutil import atomic_write_json, read_json
from .manifest import FACESET_BASE, FACESET_NAME, ManifestError, _Fields

CAPTURE_DATES = "face-sets/capture-dates"
DATES_VERSION = 1
DATES_SUFFIX = ".dates.json"            # beside the cache: CACHE.dates.json
DATE_TAGS = ("DateTimeOriginal", "DateTimeDigitized")   # EXIF tags read, in this order
ISO_DATE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                      r"T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])")
SHA256 = re.compile(r"[0-9a-f]{64}")
FIRST_YEAR = 1826                       # the oldest surviving photograph

THIN_DIR = "_thin"                      # SWAP_READY/_thin/: eras too small to use
ERAS_SECTION = "eras"                   # the top-level manifest's eras runs
THIN_SECTION = "thin_eras"              # ... and the eras moved to _thin/
UNDATED = "undated"
# what an eras run's recorded parameters may be (``eras extend`` runs with them): cosine
# distances, the quality gates, faces and years; (low, high, whole number)
PARAMETER_RANGES = {"recover": (0.0, 2.0, False), "tighten": (0.0, 2.0, False),
                    "split": (0.0, 2.0, False), "attach": (0.0, 2.0, False),
                    "min_short": (0.0, 100_000.0, False), "min_blur": (0.0, 1e9, False),
                    "min_det_score": (0.0, 1.0, False), "min_anchor": (1, 10_000_000, True),
                    "min_era_faces": (0, 10_000_000, True), "year_window": (0, 1000, True)}
# an era faceset: its source faceset's name, its years (or "undated"), _2, _3... on a clash
ERA_NAME = re.compile(rf"(?P<source>{FACESET_BASE})_"
                      r"(?P<years>[0-9]{4}-[0-9]{4}|undated)(?:_(?P<n>[0-9]+))?")


# ---- capture dates beside the cache --------------------------------------------------------
def dates_path(cache_path: str | os.PathLike) -> Path:
    """CACHE.dates.json beside the cache (the cache's own name plus the suffix)."""
    return Path(os.fspath(cache_path) + DATES_SUFFIX)


def last_year() -> int:
    return time.gmtime().tm_year + 1


def parse_exif_date(value) -> str | None:
    """An EXIF date (``YYYY:MM:DD HH:MM:SS``, sometimes without the time, with ``-`` or
    stray NULs/spaces) as ``YYYY-MM-DDTHH:MM:SS``; None when it is no plausible date
    (``0000:00:00``, blanks, a year before 1826 or after next year)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    m = re.match(r"\s*([0-9]{4})[:\-/]([0-9]{2})[:\-/]([0-9]{2})"
                 r"(?:[ T]([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?)?", value.strip("\x00 "))
    if not m:
        return None
    y, mo, d = int(m[1]), int(m[2]), int(m[3])
    hh, mm, ss = (int(m[i]) if m[i] else 0 for i in (4, 5, 6))
    if not (FIRST_YEAR <= y <= last_year() and 1 <= mo <= 12 and 1 <= d <= 31
            and hh < 24 and mm < 60 and ss < 60):
        return None
    return f"{y:04d}-{mo:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}"


def year_of(date: str | None) -> int | None:
    return int(date[:4]) if date else None


def dates_body(dates: dict[str, str | None]) -> dict:
    return {"format": CAPTURE_DATES, "version": DATES_VERSION, "tags": list(DATE_TAGS),
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dates": dict(sorted(dates.items()))}


def write_dates(path: str | os.PathLike, dates: dict[str, str | None]) -> None:
    atomic_write_json(path, dates_body(dates))


def load_dates(path: str | os.PathLike) -> dict[str, str | None]:
    """Read and check CACHE.dates.json ({} when there is none): sha256 -> date or None.
    One error naming the file and the field."""
    path = Path(path)
    if not path.exists():
        return {}
    m = read_json(path)
    c = _Fields(path)
    if not isinstance(m, dict) or m.get("format") != CAPTURE_DATES:
        raise ManifestError(f"{path}: not a {CAPTURE_DATES} file; move it away (it is "
                            "rebuilt from the photos)")
    if c.int(m, "version", "") > DATES_VERSION:
        raise ManifestError(f"{path}: capture dates v{m['version']} are newer than this "
                            "face-sets; upgrade face-sets")
    dates = c.obj(m, "dates", "")
    top = last_year()
    for sha, date in dates.items():
        if not SHA256.fullmatch(sha):
            c.fail(f"dates[{sha[:80]!r}]", "is not a sha256")
        if date is None:
            continue
        if not isinstance(date, str) or not ISO_DATE.fullmatch(date) \
                or not FIRST_YEAR <= int(date[:4]) <= top:
            c.fail(f"dates.{sha}", f"{str(date)[:40]!r} is not a date (YYYY-MM-DDTHH:MM:SS, "
                                   f"{FIRST_YEAR}-{top})")
    return dict(dates)


# ---- era names and the top-level manifest's sections --------------------------------------
def era_name(source: str, years: tuple[int, int] | None, taken: set[str]) -> str:
    """``faceset_NNN_YYYY-YYYY`` (``faceset_NNN_undated`` without a dated photo), with
    ``_2``, ``_3``... when ``taken`` (updated) holds that name already."""
    base = f"{source}_{years[0]:04d}-{years[1]:04d}" if years else f"{source}_{UNDATED}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def era_entry(name: str, folder: str, faces: int, years: tuple[int, int] | None,
              dominant_year: int | None, undated: int, anchor: bool, fragments: int,
              centroid, thin: bool) -> dict:
    """One era of an ``eras[]`` record: where it went, its faces, its years (the 5th to
    95th percentile of its dated faces' years), its dominant year (the most frequent),
    its undated faces, whether it grew from an anchor, the fragments that joined it."""
    return {"name": name, "folder": folder, "faces": faces,
            "years": list(years) if years else None, "dominant_year": dominant_year,
            "undated": undated, "anchor": anchor, "fragments_joined": fragments,
            "thin": thin, "centroid": [round(float(v), 6) for v in centroid]}


def eras_record(run: str, step: str, source: str, centroid, parameters: dict,
                eras: list[dict], counts: dict, probe: dict) -> dict:
    """An ``eras`` run's entry in the top-level manifest's ``eras[]``: the source faceset,
    the re-centroided centroid ``eras extend`` recovers from, the parameters, the eras."""
    return {"run": run, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
            "source": source, "centroid": [round(float(v), 6) for v in centroid],
            "parameters": parameters, "eras": eras, "counts": counts, "probe": probe}


def thin_record(run: str, source: str, era: dict, min_faces: int) -> dict:
    """An era moved to ``_thin/``: its entry in the top-level manifest's ``thin_eras[]``."""
    return {"run": run, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": "eras",
            "source": source, "name": era["name"], "folder": era["folder"],
            "faces": era["faces"], "years": era["years"],
            "why": f"fewer than {min_faces} faces"}


def check_eras_sections(top: dict, path: str | os.PathLike) -> list[dict]:
    """The top-level manifest's ``eras[]`` (and ``thin_eras[]``), checked: every name an
    era name, every folder inside the swap-ready folder (``_thin/NAME`` or ``NAME``)."""
    c = _Fields(Path(path))
    for f, rec in c.items(top, ERAS_SECTION, "", required=False):
        c.str(rec, "run", f)
        source = c.name(rec, "source", f, FACESET_NAME, "a faceset name (faceset_NNN)")
        _unit_vector(c, rec, "centroid", f)
        params = c.obj(rec, "parameters", f)
        for k, (low, high, whole) in PARAMETER_RANGES.items():
            value = (c.int if whole else c.num)(params, k, f"{f}.parameters", required=False)
            if value is not None and not low <= value <= high:
                c.fail(f"{f}.parameters.{k}", f"{value!r} is not in {low}..{high}")
        for g, era in c.items(rec, "eras", f):
            name = c.name(era, "name", g, ERA_NAME, "an era name (faceset_NNN_YYYY-YYYY)")
            if ERA_NAME.fullmatch(name)["source"] != source:
                c.fail(f"{g}.name", f"{name!r} is not an era of {source}")
            _era_folder(c, era, name, g)
            c.int(era, "faces", g)
            c.get(era, "dominant_year", g, (int, type(None)), "a year or null")
            c.get(era, "thin", g, (bool,), "true or false")
            _unit_vector(c, era, "centroid", g)
    for f, rec in c.items(top, THIN_SECTION, "", required=False):
        if "folder" not in rec and "moved_to" in rec:
            # a faceset the occlusion filter left too thin (occlusion apply): _thin/<name>
            moved = c.str(rec, "moved_to", f)
            parent, _, leaf = moved.partition("/")
            if parent != THIN_DIR or leaf in ("", ".", "..") or "/" in leaf or "\\" in leaf:
                c.fail(f"{f}.moved_to", f"{moved!r} is not a folder in {THIN_DIR}/")
            continue
        name = c.name(rec, "name", f, ERA_NAME, "an era name (faceset_NNN_YYYY-YYYY)")
        _era_folder(c, rec, name, f)
    return top.get(ERAS_SECTION, [])


def _era_folder(c: _Fields, obj: dict, name: str, field: str) -> str:
    folder = c.str(obj, "folder", field)
    if folder not in (name, f"{THIN_DIR}/{name}"):
        c.fail(f"{field}.folder", f"{folder!r} is not {name} or {THIN_DIR}/{name}")
    return folder


def _unit_vector(c: _Fields, obj: dict, key: str, field: str) -> None:
    import math

    values = c.get(obj, key, field, (list,), "a list")
    if not values:
        c.fail(f"{field}.{key}", "is empty")
    for i, v in enumerate(values):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            c.fail(f"{field}.{key}[{i}]", f"{v!r} is not a finite number")
