"""Reading photos safely and cheaply: header checks, decode at a reduced scale, sharpness.

JPEGs are decoded with libjpeg's DCT scaling (OpenCV's IMREAD_REDUCED_*), which is several
times faster than a full decode followed by a resize. PNG, WebP, BMP and TIFF are decoded by
OpenCV too (16-bit PNG becomes 8-bit, alpha is dropped); HEIC/HEIF (through pillow-heif,
registered with Pillow on first use), AVIF, GIF (first frame) and whatever OpenCV cannot
decode go through Pillow. EXIF orientation is read by Pillow for every format and applied
here, the same way whichever library decoded the pixels; every coordinate we record is in
the pixels of the full-size, oriented image.
"""
from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff",
                    ".heic", ".heif", ".avif", ".gif"}
DEFAULT_MAX_PIXELS = 180_000_000  # beyond this a file is treated as a decompression bomb
# OpenCV's imread flag per decode factor (OpenCV is imported when an image is decoded, not
# with this module: `--help` stays fast)
_REDUCED = {1: "IMREAD_COLOR", 2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4",
            8: "IMREAD_REDUCED_COLOR_8"}
BLUR_SIZE = 64  # blur is measured on the face crop resampled to BLUR_SIZE x BLUR_SIZE
# formats OpenCV decodes (Pillow's names; MPO is a JPEG with extra pictures after it)
_OPENCV_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"}
# readers that hand over pixels already oriented (Pillow's TIFF and OpenCV's both apply
# the tag; pillow-heif applies HEIF's own rotation and resets the EXIF tag to 1)
_ORIENTED_BY_READER = {"TIFF", "HEIF"}
# ISO-BMFF brands of HEIF photos (HEVC-coded: iPhones; mif1/msf1: generic HEIF)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_heif_lock = threading.Lock()
_heif_state: list[bool] = []   # [registered?] once tried


class ImageError(Exception):
    """A file that cannot be used as a photo; the message is the recorded reason."""


@dataclass
class ImageHeader:
    width: int   # after EXIF orientation
    height: int
    format: str


def heif_support() -> bool:
    """Register pillow-heif's HEIF opener with Pillow (once, on first use); False when
    pillow-heif is not installed."""
    if not _heif_state:
        with _heif_lock:
            if not _heif_state:
                try:
                    import pillow_heif
                    pillow_heif.register_heif_opener()
                    _heif_state.append(True)
                except ImportError:
                    _heif_state.append(False)
    return _heif_state[0]


def _looks_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy view of the file (header parsed, pixels not decoded)."""
    heif_support()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: we check below
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large ({exc})") from None
    except Exception as exc:
        if _looks_heif(data) and not heif_support():
            raise ImageError("HEIC/HEIF photo, and pillow-heif (which reads them) is not "
                             "installed: pip install pillow-heif") from None
        raise ImageError(f"not an image ({type(exc).__name__})") from None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) the reader's pixels still need."""
    if (im.format or "").upper() in _ORIENTED_BY_READER:
        return 1
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _oriented_size(im: Image.Image) -> tuple[int, int, int]:
    """(width, height, orientation still to apply) of the displayed image."""
    orientation = _orientation(im)
    w, h = im.size
    return (h, w, orientation) if orientation in (5, 6, 7, 8) else (w, h, orientation)


def read_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Size and format from the header only (no pixel decode); rejects bombs and truncation."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    with _open(data) as im:
        fmt = (im.format or "").upper()
        w, h, _ = _oriented_size(im)
    if w * h > max_pixels:
        raise ImageError(f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > "
                         f"{max_pixels / 1e6:.0f} MP; raise --max-pixels if it is real)")
    if fmt in ("JPEG", "MPO") and b"\xff\xd9" not in data[-1024:]:
        # FFD9 (end of image) cannot occur inside entropy-coded data: no EOI near the end
        # means the file was cut short
        raise ImageError("truncated JPEG (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise ImageError("truncated PNG (no IEND chunk)")
    return ImageHeader(w, h, fmt)


def scale_for(long_side: int, target: int) -> int:
    """Largest DCT scale divisor (8, 4, 2, 1) that keeps ``long_side / f >= target``."""
    for f in (8, 4, 2):
        if long_side / f >= target:
            return f
    return 1


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to decoded pixels, as Pillow's exif_transpose does."""
    if orientation == 2:
        image = image[:, ::-1]
    elif orientation == 3:
        image = image[::-1, ::-1]
    elif orientation == 4:
        image = image[::-1]
    elif orientation == 5:
        image = image.swapaxes(0, 1)
    elif orientation == 6:
        image = image.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        image = image.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        image = image.swapaxes(0, 1)[::-1]
    else:
        return image
    return np.ascontiguousarray(image)


def _pillow_bgr(im: Image.Image) -> np.ndarray:
    """The first frame as BGR uint8 (16-bit and float modes scaled down, alpha dropped)."""
    import cv2
    im.seek(0)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        gray = np.asarray(im, dtype=np.float64)
        if gray.size and gray.max() > 255:
            gray = gray / 257.0
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    rgb = np.asarray(im.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def decode(data: bytes, factor: int = 1) -> np.ndarray:
    """Decode to BGR uint8 at 1/factor scale (EXIF orientation applied; the first frame of
    an animation)."""
    import cv2

    def fits(image: np.ndarray) -> bool:
        # every coordinate is mapped back with width / decoded width: the two must agree
        return (abs(image.shape[1] * factor - w) <= factor
                and abs(image.shape[0] * factor - h) <= factor)

    with _open(data) as im:
        fmt = (im.format or "").upper()
        w, h, orientation = _oriented_size(im)
        if fmt in _OPENCV_FORMATS:
            buf = np.frombuffer(data, dtype=np.uint8)
            flags = getattr(cv2, _REDUCED[factor]) | cv2.IMREAD_IGNORE_ORIENTATION
            img = cv2.imdecode(buf, flags)
            if img is not None:
                img = orient(img, orientation)
                if fits(img):
                    return img
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = _pillow_bgr(im)
        except Exception as exc:
            raise ImageError(f"could not decode image data ({type(exc).__name__})") from None
    if factor > 1:
        img = cv2.resize(img, (max(1, img.shape[1] // factor), max(1, img.shape[0] // factor)),
                         interpolation=cv2.INTER_AREA)
    img = orient(img, orientation)
    if not fits(img):
        raise ImageError(f"decoded size {img.shape[1]}x{img.shape[0]} at 1/{factor} does not "
                         f"match the header's {w}x{h}")
    return img


def face_blur(image: np.ndarray, bbox) -> float:
    """Sharpness of a face: variance of the Laplacian of its bbox crop, in gray, resampled
    to BLUR_SIZE x BLUR_SIZE (64).

    Resampling to a fixed size makes the value independent of the scale the file was decoded
    at (as long as the face spans at least BLUR_SIZE px there, which embed guarantees when
    the original has it) and comparable between small and large faces.
    """
    import cv2

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
