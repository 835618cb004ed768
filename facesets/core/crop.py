"""Square face crops that hold exactly one detectable face (the ``.fsz`` invariant).

roop-unleashed re-detects every PNG of a bundle and keeps EVERY face it finds, so a crop
must show its own face (found again by the detector) and no other. ``single_face_crop``
cuts the crop, re-detects on the finished pixels and, when a neighbour's face intrudes,
paints that face's box out; if that is not enough it retries with less padding. Each step
taken is recorded so the manifest can say what was done to the crop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# padding ratios tried in turn (the first is the requested one, the rest only when needed)
FALLBACK_PADS = (0.35, 0.25, 0.15)
OWN_IOU = 0.4        # a detection on the crop is the own face when its IoU with it is this
BLANK_GROW = 0.15    # an intruding face's box is grown by this share before it is painted out


@dataclass
class Crop:
    image: np.ndarray | None        # out_size x out_size BGR, None when dropped
    box: list[float]                # crop square in source (full-size) pixels
    pad_ratio: float
    blanked: list[list[float]] = field(default_factory=list)   # crop pixels
    faces_found: int = 0
    own_score: float = 0.0
    reason: str = ""                # drop reason ("" = usable)


def crop_square(bbox, pad_ratio: float) -> np.ndarray:
    """The square (x1, y1, x2, y2) centred on ``bbox``: side = long edge * (1 + 2 pad)."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * pad_ratio)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def cut(image: np.ndarray, scale: float, box: np.ndarray, out_size: int) -> np.ndarray:
    """Resample ``box`` (full-size pixels) of ``image`` (decoded at 1/``scale``) to
    out_size x out_size; outside the photo is black (never mirrored: a mirror could add a
    face)."""
    import cv2  # here, not at module import: `--help` loads no OpenCV
    b = box / scale
    x1, y1 = int(np.floor(b[0])), int(np.floor(b[1]))
    side = max(1, int(round(b[2] - b[0])))
    h, w = image.shape[:2]
    sx1, sy1, sx2, sy2 = max(0, x1), max(0, y1), min(w, x1 + side), min(h, y1 + side)
    region = np.zeros((side, side, 3), dtype=np.uint8)
    if sx2 > sx1 and sy2 > sy1:
        region[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = image[sy1:sy2, sx1:sx2]
    interp = cv2.INTER_AREA if side > out_size else cv2.INTER_CUBIC
    return cv2.resize(region, (out_size, out_size), interpolation=interp)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _split(faces, own_box) -> tuple[object | None, list]:
    """(the detection that is the own face or None, the other detections)."""
    scored = [(iou(f.bbox, own_box), k) for k, f in enumerate(faces)]
    best = max(scored, default=(0.0, -1))
    if best[0] < OWN_IOU:
        return None, list(faces)
    return faces[best[1]], [f for k, f in enumerate(faces) if k != best[1]]


def _blank(crop: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
    """Paint grown face boxes with the crop's mean colour."""
    import cv2
    out = crop.copy()
    fill = tuple(int(v) for v in crop.reshape(-1, 3).mean(axis=0))
    n = crop.shape[0]
    for b in boxes:
        gx, gy = (b[2] - b[0]) * BLANK_GROW, (b[3] - b[1]) * BLANK_GROW
        x1, y1 = int(max(0, b[0] - gx)), int(max(0, b[1] - gy))
        x2, y2 = int(min(n, b[2] + gx)), int(min(n, b[3] + gy))
        cv2.rectangle(out, (x1, y1), (x2, y2), fill, thickness=-1)
    return out


def single_face_crop(detect: Callable[[np.ndarray], list], image: np.ndarray, scale: float,
                     bbox, out_size: int, pad_ratio: float) -> Crop:
    """A crop of the face at ``bbox`` (full-size pixels) in which ``detect`` finds exactly
    that face; ``Crop.reason`` says why not when it cannot be made."""
    pads = [pad_ratio] + [p for p in FALLBACK_PADS if p < pad_ratio]
    reason = "own_face_not_found"
    for pad in pads:
        box = crop_square(bbox, pad)
        k = out_size / (box[2] - box[0])
        own_box = (np.asarray(bbox, dtype=np.float64) - np.r_[box[:2], box[:2]]) * k
        crop = cut(image, scale, box, out_size)
        own, others = _split(detect(crop), own_box)
        if own is None:
            reason = "own_face_not_found"
            continue
        blanked: list[list[float]] = []
        if others:
            reason = "several_faces"
            blanked = [[round(float(v), 1) for v in f.bbox] for f in others]
            crop = _blank(crop, [f.bbox for f in others])
            found = detect(crop)
            own, others = _split(found, own_box)
            if own is None or others:
                continue
        return Crop(crop, [round(float(v), 1) for v in box], pad, blanked,
                    faces_found=1, own_score=round(float(own.det_score), 4))
    return Crop(None, [round(float(v), 1) for v in crop_square(bbox, pad_ratio)], pad_ratio,
                reason=reason)
