"""The face backend interface: load a model pack, find faces, describe them.

A backend is what the embed pipeline, the workers, enrich and verify-fsz call; model packs
and ONNX Runtime providers are its business alone. Images are BGR uint8 arrays (OpenCV's
layout). Coordinates a backend returns are in the pixels of the image it was given.
"""
from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

DEFAULT_DET_SIZE = 640   # detector input size, px (--det-size)


class BackendError(RuntimeError):
    """The model pack cannot be loaded (missing, incomplete, wrong kind)."""


@dataclass
class DetectedFace:
    bbox: np.ndarray                      # (4,) x1, y1, x2, y2
    kps: np.ndarray                       # (5, 2) eyes, nose, mouth corners
    det_score: float
    embedding: np.ndarray | None = None   # (D,) float32 as the model gives it
    landmark_2d_106: np.ndarray | None = None
    landmark_3d_68: np.ndarray | None = None
    pose: np.ndarray | None = None        # (3,) pitch, yaw, roll in degrees

    def scaled(self, factor: float) -> "DetectedFace":
        """The same face with its geometry multiplied by ``factor`` (another decode scale)."""
        def mul(a, cols=2):
            if a is None:
                return None
            a = np.array(a, dtype=np.float32)
            a[..., :cols] *= factor
            return a
        return DetectedFace(bbox=mul(self.bbox, 4), kps=mul(self.kps),
                            det_score=self.det_score, embedding=self.embedding,
                            landmark_2d_106=mul(self.landmark_2d_106),
                            landmark_3d_68=mul(self.landmark_3d_68, 2),  # z is model-relative
                            pose=self.pose)


class FaceBackend(ABC):
    """Base class of face backends."""

    #: the model pack a command uses when none is named (``--model``)
    DEFAULT_MODEL: str
    #: model pack name (recorded in the cache's meta as ``model``)
    name: str
    #: identity of the recognition weights (``model_id`` in meta): caches of different
    #: weights are never mixed
    model_id: str
    embedding_dim: int
    #: True when the pack has landmark models (landmark_2d_106, landmark_3d_68 + pose)
    has_landmarks: bool = False
    det_size: int = DEFAULT_DET_SIZE

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Find faces: bbox, kps and det_score only."""

    @abstractmethod
    def embed(self, image: np.ndarray, faces: list[DetectedFace]) -> None:
        """Fill ``embedding`` of each face (batched where the model batches)."""

    def landmarks(self, image: np.ndarray, faces: list[DetectedFace]) -> None:
        """Fill landmark_2d_106 / landmark_3d_68 / pose when the pack has those models."""

    def analyze(self, image: np.ndarray) -> list[DetectedFace]:
        """Detect, then landmarks and embeddings for every face, on one image."""
        faces = self.detect(image)
        if faces:
            self.landmarks(image, faces)
            self.embed(image, faces)
        return faces

    #: the providers asked for (ONNX Runtime names)
    providers: list[str] = []

    def active_providers(self) -> list[str]:
        """The providers the model sessions actually run on (summaries report these)."""
        return list(self.providers)

    def describe(self) -> dict:
        """What goes into a cache's meta about the model."""
        return {"model": self.name, "model_id": self.model_id,
                "embedding_dim": self.embedding_dim, "det_size": self.det_size,
                "has_landmarks": self.has_landmarks}


_INFERENCE_LOCKS: dict[str, "threading.Lock"] = {}
_LOCKS_GUARD = threading.Lock()


def inference_lock(providers: list[str]):
    """The lock every inference on a DirectML device takes: concurrent DirectML sessions
    crash AMD drivers (amdxc64.dll; Deep-Live-Cam PR #1710), so a process runs one inference
    at a time there. Other providers: a no-op context (they are safe to share)."""
    if not providers or providers[0] != "DmlExecutionProvider":
        return contextlib.nullcontext()
    with _LOCKS_GUARD:
        return _INFERENCE_LOCKS.setdefault(providers[0], threading.Lock())


def fell_back(requested: list[str], active: list[str]) -> list[str]:
    """The GPU providers that were requested and that no session took ([] when fine)."""
    gpu = [p for p in requested if p != "CPUExecutionProvider" and not p.startswith("torch:cpu")]
    return gpu if gpu and not any(p in active for p in gpu) else []


def providers_note(requested: list[str], active: list[str]) -> str:
    """What a summary says about where the models ran: the providers the sessions actually
    use and, when a requested GPU provider was not taken, a warning (ONNX Runtime falls
    back to the CPU silently, at a tenth of the speed)."""
    text = f"providers {'+'.join(active) or 'none'}"
    missing = fell_back(requested, active)
    if missing:
        text += (f" (WARNING: {', '.join(missing)} was requested but FELL BACK TO THE CPU; "
                 "check the GPU driver and the onnxruntime build)")
    return text


def run_fixed_batches(batch: np.ndarray, size: int | None, run) -> np.ndarray:
    """``run`` (a graph's forward pass) over ``batch`` in chunks of exactly ``size`` rows,
    the last one padded with zeros whose rows are dropped; ``size`` None (a free batch
    dimension) or the batch's own length: one call. For graphs whose batch dimension is
    fixed (a number in the graph, or a free-dimension override on DirectML)."""
    if not size or len(batch) == size:
        return np.asarray(run(batch))
    parts = []
    for start in range(0, len(batch), size):
        chunk = batch[start:start + size]
        real = len(chunk)
        if real < size:
            chunk = np.concatenate([chunk, np.zeros((size - real, *chunk.shape[1:]),
                                                    chunk.dtype)])
        parts.append(np.asarray(run(chunk))[:real])
    return np.concatenate(parts)


def batch_dim_name(session) -> str | None:
    """The symbolic name of a session's first input's batch dimension (what a free-dimension
    override names), or None when it is a number or has no name."""
    shape = session.get_inputs()[0].shape
    dim = shape[0] if shape else None
    return dim if isinstance(dim, str) and dim else None
