"""Reading photos safely and cheaply: header checks, decode at a reduced scale, sharpness.

JPEGs are decoded with libjpeg's DCT scaling (OpenCV's IMREAD_REDUCED_*), which is several
times faster than a full decode followed by a resize. OpenCV applies EXIF orientation in
both; every coordinate we record is in the pixels of the full-size, oriented image.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 180_000_000  # beyond this a file is treated as a decompression bomb
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
            4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
BLUR_SIZE = 64  # blur is measured on the face crop resampled to BLUR_SIZE x BLUR_SIZE


class ImageError(Exception):
    """A file that cannot be used as a photo; the message is the recorded reason."""


@dataclass
class ImageHeader:
    width: int   # after EXIF orientation
    height: int
    format: str


def read_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Size and format from the header only (no pixel decode); rejects bombs and truncation."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: we check below
            with Image.open(io.BytesIO(data)) as im:
                w, h, fmt = im.width, im.height, (im.format or "").upper()
                try:
                    orientation = im.getexif().get(0x0112, 1)
                except Exception:
                    orientation = 1
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large ({exc})") from None
    except Exception as exc:
        raise ImageError(f"not an image ({type(exc).__name__})") from None
    if w * h > max_pixels:
        raise ImageError(f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > "
                         f"{max_pixels / 1e6:.0f} MP; raise --max-pixels if it is real)")
    if fmt == "JPEG" and b"\xff\xd9" not in data[-1024:]:
        # FFD9 (end of image) cannot occur inside entropy-coded data: no EOI near the end
        # means the file was cut short
        raise ImageError("truncated JPEG (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise ImageError("truncated PNG (no IEND chunk)")
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ImageHeader(w, h, fmt)


def scale_for(long_side: int, target: int) -> int:
    """Largest DCT scale divisor (8, 4, 2, 1) that keeps ``long_side / f >= target``."""
    for f in (8, 4, 2):
        if long_side / f >= target:
            return f
    return 1


def decode(data: bytes, factor: int = 1) -> np.ndarray:
    """Decode to BGR uint8 at 1/factor scale (EXIF orientation applied)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, _REDUCED[factor])
    if img is None:
        raise ImageError("could not decode image data")
    return img


def face_blur(image: np.ndarray, bbox) -> float:
    """Sharpness of a face: variance of the Laplacian of its bbox crop, in gray, resampled
    to BLUR_SIZE x BLUR_SIZE (64).

    Resampling to a fixed size makes the value independent of the scale the file was decoded
    at (as long as the face spans at least BLUR_SIZE px there, which embed guarantees when
    the original has it) and comparable between small and large faces.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in bbox)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(w, x2), min(h, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    crop = image[y1:y2, x1:x2]
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    shrinking = min(gray.shape) >= BLUR_SIZE
    gray = cv2.resize(gray, (BLUR_SIZE, BLUR_SIZE),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())
