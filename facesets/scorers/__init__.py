"""Per-face attribute scorers behind one small interface (base.FaceScorer).

``load_scorer`` is the one place that picks and builds a scorer by name; a new scorer adds
its factory to ``_FACTORIES`` (imported lazily, so heavy libraries load only when used).
``scorer_from_spec`` reads the ``--scorer`` spelling: ``clip`` or ``onnx:PATH``.
"""
from __future__ import annotations

from typing import Callable

from .base import FaceScorer, ScorerError


def _clip(**options) -> FaceScorer:
    from .clip import ClipScorer
    return ClipScorer(**options)


def _onnx(**options) -> FaceScorer:
    from .onnx_classifier import OnnxScorer
    return OnnxScorer(**options)


# name -> factory(**options) -> FaceScorer
_FACTORIES: dict[str, Callable[..., FaceScorer]] = {"clip": _clip, "onnx": _onnx}


def scorer_names() -> list[str]:
    return sorted(_FACTORIES)


def load_scorer(name: str, **options) -> FaceScorer:
    """Build the scorer called ``name`` with its options (model root, providers...)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(scorer_names()) or "none yet"
        raise ScorerError(f"unknown scorer {name!r} (known: {known})") from None
    return factory(**options)


def scorer_from_spec(spec: str, clip_options: dict | None = None,
                     providers: str | None = None, batch_size: int | None = None) -> FaceScorer:
    """``clip`` (open_clip, torch; ``clip_options``: model, pretrained, weights, prompts...)
    or ``onnx:PATH`` (ONNX Runtime: a classifier, or a graph of ``occlusion export-onnx``)."""
    extra = {"batch_size": batch_size} if batch_size else {}
    if spec == "clip":
        return load_scorer("clip", **dict(clip_options or {}), **extra)
    if spec.startswith("onnx:") and len(spec) > 5:
        return load_scorer("onnx", path=spec[5:], providers=providers, **extra)
    raise ScorerError(f"--scorer {spec!r} is not clip or onnx:PATH")


__all__ = ["FaceScorer", "ScorerError", "load_scorer", "scorer_from_spec", "scorer_names"]
