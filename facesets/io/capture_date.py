"""A photo's EXIF capture date, read from its header only (no pixels are decoded).

Pillow reads the EXIF block of JPEG, TIFF, PNG (eXIf), WebP, AVIF and, with pillow-heif
registered, HEIC; the date is the first of DateTimeOriginal, DateTimeDigitized (the tags
formats/eras.py lists) with a plausible value. IFD0's DateTime is not used: editors and
copy tools rewrite it, so it says when a file was last saved, not when it was taken.
"""
from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from ..formats.eras import DATE_TAGS, parse_exif_date
from .imageio import heif_support

_EXIF_IFD = 0x8769
_TAG_IDS = {"DateTimeOriginal": 0x9003, "DateTimeDigitized": 0x9004}


class Unreadable(Exception):
    """The photo could not be opened (gone, not an image, damaged header)."""


def capture_date(path: str | os.PathLike) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS`` of the photo at ``path``, or None when it has no usable
    date; ``Unreadable`` when the file cannot be opened as an image."""
    heif_support()
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(_EXIF_IFD)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise Unreadable(f"{path}: {exc}") from None
    for tag in DATE_TAGS:
        date = parse_exif_date(sub.get(_TAG_IDS[tag]))
        if date:
            return date
    return None
