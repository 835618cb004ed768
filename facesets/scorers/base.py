"""Per-face attribute scorers: the base every scorer implements.

A scorer looks at face crops and gives, for each crop, a probability per attribute it knows
("occluded", "sunglasses", "mask", "eyes_closed", "blurry"...). Filters and reports decide
what to do with the numbers (a threshold per attribute); a scorer only measures.

The contract:
``name``
    The scorer's key in ``SCORERS`` and in what it writes (cache columns, manifests): stable
    across versions of the same weights; new weights get a new name.
``attributes``
    The attribute names it scores, in a fixed order; every dict ``score`` returns has exactly
    these keys.
``batch_size``
    How many crops ``score`` takes at once to make good use of the device; callers split
    longer lists into batches of this size, so ``score`` may assume ``len(images) <=
    batch_size``.
``score(images)``
    ``images``: RGB uint8 arrays (H x W x 3), one aligned face crop each, any size (the
    scorer resizes to its input). Returns one ``{attribute: probability in [0, 1]}`` per
    image, in input order. Never reads files, never keeps state between calls.
``prepare(image)`` / ``score_prepared(prepared)``
    ``score`` in two halves, so that callers can overlap them (runtime.jobs.prefetch):
    ``prepare`` turns one crop into the model's input (resize, normalise; thread-safe, run
    on the prefetch threads), ``score_prepared`` runs the model on a batch of those.
    ``score(images) == score_prepared([prepare(i) for i in images])``, to the bit.
``providers()``
    The execution providers (or torch device) the model actually runs on, for summaries.

The scorers, each one module in ``scorers/`` (docs/occlusion.md):
- CLIP zero-shot (``scorers/clip.py``, ``clip``): open_clip, prompt ensembles per attribute
  (positive vs negative, mean-pooled and normalised), softmax of the cosine similarities
  times the model's own logit scale.
- ONNX (``scorers/onnx_classifier.py``, ``onnx:PATH``): ONNX Runtime only, so it runs in the
  Windows GPU worker without torch: a binary occlusion classifier, or a CLIP graph written
  by ``occlusion export-onnx`` (described by the file's metadata).
Heavy imports (torch, open_clip, onnxruntime) stay inside the scorer's module and its
constructor, so importing ``facesets.scorers`` costs nothing.
A new scorer: subclass ``FaceScorer`` in ``scorers/<name>.py`` and add a line to
``_FACTORIES`` in ``scorers/__init__.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ScorerError(RuntimeError):
    """A scorer cannot be built (unknown name, missing weights)."""


class FaceScorer(ABC):
    """Base class of per-face attribute scorers (see the module docstring)."""

    #: the scorer's name in ``SCORERS``
    name: str
    #: the attributes ``score`` returns, in order
    attributes: tuple[str, ...]
    #: crops per ``score`` call
    batch_size: int = 32

    def score(self, images: list[np.ndarray]) -> list[dict[str, float]]:
        """One ``{attribute: probability}`` per RGB face crop, in input order."""
        return self.score_prepared([self.prepare(im) for im in images])

    def prepare(self, image: np.ndarray):
        """One crop as the model's input (thread-safe); the crop itself by default."""
        return image

    @abstractmethod
    def score_prepared(self, prepared: list) -> list[dict[str, float]]:
        """``score`` of crops already through ``prepare``."""

    def warm_up(self) -> None:
        """Run one batch before the timed work (a GPU compiles and allocates on its first)."""

    def providers(self) -> list[str]:
        """Where the model runs (ONNX Runtime providers, or a torch device)."""
        return []

    def requested_providers(self) -> list[str]:
        """Where the model was asked to run (same spelling as ``providers``)."""
        return self.providers()

    def providers_note(self) -> str:
        """The summary's words on where the model ran, a warning on a CPU fallback."""
        from ..backends.base import providers_note

        return providers_note(self.requested_providers(), self.providers())

    def score_all(self, images: list[np.ndarray]) -> list[dict[str, float]]:
        """``score`` over any number of crops, ``batch_size`` at a time."""
        out: list[dict[str, float]] = []
        for start in range(0, len(images), self.batch_size):
            out += self.score(images[start:start + self.batch_size])
        return out
