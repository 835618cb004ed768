"""Face backends behind one small interface (base.FaceBackend).

``load_backend`` is the one place that picks and builds a backend from the model options
that ``embed`` (and the workers, enrich, verify-fsz) take; it picks by name from BACKENDS.
"""
from __future__ import annotations

import importlib

from .base import DEFAULT_DET_SIZE, BackendError, DetectedFace, FaceBackend

DEFAULT_BACKEND = "insightface"
# backend name -> "module:class" in this package; imported only when picked (heavy imports)
BACKENDS = {"insightface": "insightface_backend:InsightFaceBackend"}


def backend_class(name: str = DEFAULT_BACKEND) -> type[FaceBackend]:
    """The FaceBackend subclass registered as ``name``."""
    if name not in BACKENDS:
        raise BackendError(f"unknown face backend {name!r} (known: {', '.join(sorted(BACKENDS))})")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def default_model(backend: str = DEFAULT_BACKEND) -> str:
    """The model pack a backend uses when none is named."""
    return backend_class(backend).DEFAULT_MODEL


def load_backend(model: str | None = None, model_root: str | None = None,
                 providers: str | None = None, det_size: int = DEFAULT_DET_SIZE,
                 with_recognition: bool = True, backend: str = DEFAULT_BACKEND) -> FaceBackend:
    cls = backend_class(backend)
    return cls(model=cls.DEFAULT_MODEL if model is None else model, model_root=model_root,
               providers=providers, det_size=det_size, with_recognition=with_recognition)


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "DEFAULT_DET_SIZE", "BackendError", "DetectedFace",
           "FaceBackend", "backend_class", "default_model", "load_backend"]
