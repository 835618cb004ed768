"""Per-face attribute scorers behind one small interface (base.FaceScorer).

``load_scorer`` is the one place that picks and builds a scorer by name; a new scorer adds
its factory to ``_FACTORIES`` (imported lazily, so heavy libraries load only when used).
"""
from __future__ import annotations

from typing import Callable

from .base import FaceScorer, ScorerError

# name -> factory(**options) -> FaceScorer; none yet (CLIP and ONNX classifiers come next)
_FACTORIES: dict[str, Callable[..., FaceScorer]] = {}


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


__all__ = ["FaceScorer", "ScorerError", "load_scorer", "scorer_names"]
