"""Face backends behind one small interface (base.FaceBackend).

``load_backend`` is the one place that picks and builds a backend from the model options
that ``embed`` (and the workers, enrich, verify-fsz) take.
"""
from __future__ import annotations

from .base import BackendError, DetectedFace, FaceBackend


def load_backend(model: str = "buffalo_l", model_root: str | None = None,
                 providers: str | None = None, det_size: int = 640,
                 with_recognition: bool = True) -> FaceBackend:
    from .insightface_backend import InsightFaceBackend

    return InsightFaceBackend(model=model, model_root=model_root, providers=providers,
                              det_size=det_size, with_recognition=with_recognition)


__all__ = ["BackendError", "DetectedFace", "FaceBackend", "load_backend"]
