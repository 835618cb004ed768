"""Realistic large test photos for benchmarks: LFW faces placed on 12-MP canvases.

Faces are upscaled 2-4x (a 250 px LFW photo becomes 500-1000 px, so the face spans roughly
200-450 px, as in a family photo taken with a phone) and pasted on a textured 4000x3000
background; ``noface_every`` makes every n-th photo a landscape without faces.
"""
from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
FACES = SHARED / "testdata" / "faces"


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth colour gradient with fine noise: compresses like a real photo (2-4 MB)."""
    small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    bg += rng.integers(-12, 12, size=(h, w, 1), dtype=np.int16)
    return np.clip(bg, 0, 255).astype(np.uint8)


def make_photos(dest: Path, n: int, seed: int = 0, size=(4000, 3000), max_faces: int = 3,
                noface_every: int = 0, quality: int = 90) -> list[Path]:
    """Write ``n`` JPEGs of ``size`` with 1..max_faces faces each; returns their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    faces = sorted(FACES.rglob("*.jpg"))
    w, h = size
    out = []
    for i in range(n):
        img = _background(rng, w, h)
        k = 0 if noface_every and i % noface_every == noface_every - 1 else \
            pick.randint(1, max_faces)
        slots = pick.sample(range(3), k)  # side by side, never overlapping
        for slot in slots:
            face = cv2.imread(str(pick.choice(faces)))
            scale = pick.uniform(2.0, 4.0)
            side = min(int(face.shape[0] * scale), w // 3 - 20, h - 20)
            face = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
            x = slot * (w // 3) + pick.randint(0, w // 3 - side)
            y = pick.randint(0, h - side)
            img[y:y + side, x:x + side] = face
        path = dest / f"photo_{i:05d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(path)
    return out
