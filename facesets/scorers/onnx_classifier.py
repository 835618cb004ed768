"""ONNX scorers (``--scorer onnx:PATH``): ONNX Runtime only, so they run in the GPU worker
without torch.

One file, two kinds, told apart by the file's metadata:
- a binary face-occlusion classifier (no face-sets metadata): input N x 3 x 224 x 224 RGB,
  ImageNet mean/std, output logits ``[clean, occluded]``; the score is the softmax's
  ``occluded`` (the format of the ResNet18 classifiers trained on MAFA with random-object
  augmentation, which catch hands over faces);
- a CLIP zero-shot graph written by ``occlusion export-onnx`` (metadata ``face-sets``
  names the format ``face-sets/clip-zero-shot``): the image tower, the prompt ensembles'
  normalised text embeddings and the logit scale in one graph whose output is already the
  probability per attribute; its input size, mean/std and resize filter are in the metadata.
The session warns loudly on stderr when a requested GPU provider was not taken (ONNX Runtime
silently falls back to the CPU).

Fixed shapes: a graph whose batch dimension is a number (a batch-1 classifier) is run in
chunks of that size; on DirectML, which re-plans for every new shape and is slow on free
dimensions (onnxruntime #14550), the CLIP graph's free batch dimension (``n``, as
``export-onnx`` names it) is fixed to the batch size by a free-dimension override and a
short last batch is padded (the padding's rows are dropped). Every ``session.run`` goes
through ``backends.base.inference_lock`` (one inference at a time per device in a process).
"""
from __future__ import annotations

import json
import sys

import numpy as np

from .base import FaceScorer, ScorerError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, softmax, to_chw

CLASSIFIER_SIZE = 224
CLASSIFIER_ATTRIBUTE = "occluded"
CLIP_GRAPH_FORMAT = "face-sets/clip-zero-shot"
CLIP_GRAPH_VERSION = 1
META_KEY = "face-sets"          # metadata_props key holding the CLIP graph's JSON description


CLIP_BATCH_DIM = "n"           # export-onnx's name of the CLIP graph's batch dimension


def open_session(path: str, providers: str | list[str] | None = None,
                 fixed_batch: int | None = None):
    """An ONNX Runtime session on the best providers (or ``providers``); warns on stderr when
    a provider other than the CPU was asked for and the session runs on the CPU.
    ``fixed_batch``: on DirectML, the free batch dimension is fixed to it."""
    import onnxruntime

    from ..backends.base import BackendError
    from ..backends.insightface_backend import best_providers, session_options

    try:
        chosen = best_providers(providers)
    except BackendError as exc:
        raise ScorerError(str(exc)) from None
    opts = session_options(chosen)
    if fixed_batch and is_directml(chosen):
        opts.add_free_dimension_override_by_name(CLIP_BATCH_DIM, int(fixed_batch))
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                               providers=chosen)
    except Exception as exc:   # onnxruntime raises its own exception types
        raise ScorerError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]})") from None
    warn_cpu_fallback(chosen, session.get_providers(), str(path))
    return session


def is_directml(providers: list[str]) -> bool:
    return bool(providers) and providers[0] == "DmlExecutionProvider"


def warn_cpu_fallback(requested: list[str], active: list[str], what: str) -> bool:
    """Print a loud warning when a GPU provider was requested but the session runs on the
    CPU only; True when it did."""
    gpu = [p for p in requested if p != "CPUExecutionProvider"]
    if gpu and not any(p in active for p in gpu):
        print(f"WARNING: {what}: ONNX Runtime did not take {', '.join(gpu)} and FELL BACK TO "
              f"THE CPU (active: {', '.join(active)}); scoring will be slow. Check the GPU "
              "driver and the onnxruntime build (onnxruntime-directml / onnxruntime-gpu).",
              file=sys.stderr, flush=True)
        return True
    return False


def graph_meta(session) -> dict | None:
    """The face-sets description of a CLIP graph, or None for a plain classifier."""
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CLIP_GRAPH_FORMAT:
        raise ScorerError(f"metadata {META_KEY!r} is not a {CLIP_GRAPH_FORMAT} description")
    return meta


def check_graph_meta(meta: dict, where: str) -> dict:
    def bad(field: str) -> ScorerError:
        return ScorerError(f"{where}: metadata {META_KEY}.{field} is missing or invalid; "
                           "re-run occlusion export-onnx")

    if not isinstance(meta.get("version"), int) or meta["version"] > CLIP_GRAPH_VERSION:
        raise bad("version")
    attrs = meta.get("attributes")
    if not isinstance(attrs, list) or not attrs or not all(
            isinstance(a, str) and a.isidentifier() for a in attrs) or len(set(attrs)) != \
            len(attrs):
        raise bad("attributes")
    size = meta.get("image_size")
    if not isinstance(size, int) or not 8 <= size <= 2048:
        raise bad("image_size")
    for key in ("mean", "std"):
        v = meta.get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(
                isinstance(x, (int, float)) and 0 < abs(x) < 10 for x in v):
            raise bad(key)
    if meta.get("interpolation") not in ("bicubic", "bilinear"):
        raise bad("interpolation")
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise bad("name")
    return meta


class OnnxScorer(FaceScorer):
    """An ONNX file scored with ONNX Runtime (see the module docstring)."""

    def __init__(self, path: str, providers: str | list[str] | None = None,
                 batch_size: int = 16):
        self.path = str(path)
        self.batch_size = int(batch_size)
        self.session = open_session(self.path, providers, fixed_batch=self.batch_size)
        from ..backends.insightface_backend import best_providers

        self.requested = best_providers(providers)
        self.input = self.session.get_inputs()[0].name
        dim = self.session.get_inputs()[0].shape[0] if self.session.get_inputs()[0].shape \
            else None
        # the batch size the graph takes: a number in the graph, or DirectML's override
        self.fixed_batch = dim if isinstance(dim, int) and dim > 0 else \
            self.batch_size if is_directml(self.session.get_providers()) else None
        meta = graph_meta(self.session)
        if meta is None:        # a binary classifier: [clean, occluded]
            self.kind = "classifier"
            self.name = f"onnx:{self.path}"
            self.attributes = (CLASSIFIER_ATTRIBUTE,)
            self.size, self.mean, self.std = CLASSIFIER_SIZE, IMAGENET_MEAN, IMAGENET_STD
            self.interpolation = "bilinear"
            out = self.session.get_outputs()[0].shape
            if len(out) != 2 or out[1] not in (2, None) and not isinstance(out[1], str):
                raise ScorerError(f"{self.path}: output shape {out} is not N x 2 logits "
                                  "[clean, occluded]")
        else:
            meta = check_graph_meta(meta, self.path)
            self.kind = "clip"
            self.name = meta["name"]
            self.attributes = tuple(meta["attributes"])
            self.size, self.mean, self.std = meta["image_size"], meta["mean"], meta["std"]
            self.interpolation = meta["interpolation"]
        self.meta = meta or {}

    def describe(self) -> dict:
        return {"scorer": self.name, "kind": self.kind, "file": self.path,
                "providers": self.session.get_providers()}

    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def requested_providers(self) -> list[str]:
        return list(self.requested)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """The graph's first output for ``batch``, in chunks of its fixed batch size (the
        last one padded with zeros, whose rows are dropped) when it has one."""
        from ..backends.base import inference_lock, run_fixed_batches

        lock = inference_lock(self.session.get_providers())

        def forward(chunk: np.ndarray) -> np.ndarray:
            with lock:
                return self.session.run(None, {self.input: chunk})[0]
        return run_fixed_batches(batch, self.fixed_batch, forward)

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = np.asarray(self._infer(batch), np.float64)
        if self.kind == "classifier":
            if out.ndim != 2 or out.shape[1] != 2:
                raise ScorerError(f"{self.path}: output of shape {out.shape}, not N x 2 "
                                  "logits [clean, occluded]")
            return softmax(out, axis=1)[:, 1:2]
        if out.shape != (len(batch), len(self.attributes)):
            raise ScorerError(f"{self.path}: output of shape {out.shape}, not "
                              f"{len(batch)} x {len(self.attributes)}")
        return out

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return to_chw(image, self.size, self.mean, self.std, self.interpolation)

    def score_prepared(self, prepared: list[np.ndarray]) -> list[dict[str, float]]:
        if not prepared:
            return []
        probs = self.run(np.stack(prepared))
        return [{a: float(p[i]) for i, a in enumerate(self.attributes)} for p in probs]
