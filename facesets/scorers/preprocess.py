"""Face crops -> the float tensor an image model takes, with numpy and Pillow only (no torch),
so the torch path and the ONNX Runtime worker feed a model the same numbers.

``to_tensor(images, size, mean, std, interpolation)``: each RGB uint8 crop is resized so its
shorter side is ``size`` (Pillow's bicubic or bilinear, as torchvision's Resize does on PIL
images), centre-cropped to ``size`` x ``size``, scaled to [0, 1], normalised per channel
and laid out N x 3 x size x size (float32). ``to_chw`` is that for one crop (what the
prefetch threads compute); ``to_tensor`` stacks those, the same numbers to the bit.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def _square(image: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"a face crop must be RGB uint8 (H x W x 3), not {image.dtype} "
                         f"{image.shape}")
    pil = Image.fromarray(image)
    w, h = pil.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        pil = pil.resize((nw, nh), _FILTERS[interpolation])
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.float32)


def to_chw(image: np.ndarray, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
           interpolation: str = "bilinear") -> np.ndarray:
    """One crop as 3 x size x size float32 (see the module docstring); thread-safe."""
    if interpolation not in _FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r} "
                         f"(known: {', '.join(_FILTERS)})")
    square = _square(image, size, interpolation) / 255.0
    square = (square - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(square.transpose(2, 0, 1), dtype=np.float32)


def to_tensor(images: list[np.ndarray], size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              interpolation: str = "bilinear") -> np.ndarray:
    """N x 3 x size x size float32 (see the module docstring)."""
    return np.stack([to_chw(im, size, mean, std, interpolation) for im in images])


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
