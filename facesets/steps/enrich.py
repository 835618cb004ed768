"""``enrich``: landmarks (2d106, 3d68) and head pose for every cached face, resumably.

With a pack that has landmark models, each photo still missing them is decoded once at the
detection scale and re-detected (no recognition model: ``with_recognition=False``); each
cached face takes the detected face it overlaps best (IoU >= MATCH_IOU), or keeps its
cached box when none does (the landmark models need only a box), and the landmark models run
on a decode where every face spans at least LANDMARK_MIN_FACE px. Pose: the 3d68 model's
(``pose_method`` "3d68"). A pack without landmark models (e.g. the offline test pack): the
pose is estimated from the 5 cached keypoints (facesets.core.pose, "kps5"); no photo is read.

Crash-safe like embed: under the cache lock, rows go to segments every ``flush_every``
photos; the faces of a sha256 come whole from its last segment, so ALL face rows of a photo
are written again, changed fields only. A re-run picks up the faces still missing a pose (or
landmarks, with a landmark pack); a finished cache is left untouched.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..backends.base import DetectedFace, FaceBackend
from ..core.analyze import load_photo
from ..core.pose import POSE_METHOD_3D, POSE_METHOD_KPS, pose_from_kps
from ..formats.cache import (OPTIONAL_FACE_COLUMNS, FaceCache, SegmentWriter, cache_lock,
                             check_model, compact_cache, load_cache)
from ..io.imageio import ImageError, decode
from ..runtime.jobs import DEFAULT_FLUSH_EVERY, ERROR, OK, Job, run_items

MATCH_IOU = 0.5
# landmark models read a 192 px crop: decode so that every face spans at least that
LANDMARK_MIN_FACE = 192


@dataclass
class EnrichSummary:
    faces: int = 0            # faces in the cache
    todo: int = 0             # faces that needed enriching at the start
    enriched: int = 0         # faces written with a pose (and landmarks, with a landmark pack)
    landmarks: int = 0        # ... of which got landmarks from the landmark models
    kps5: int = 0             # ... of which got a pose estimated from the 5 keypoints
    unmatched: int = 0        # faces no re-detected face overlapped (cached box used)
    unreadable: int = 0       # photos that could not be read (their faces keep kps5 pose)
    photos: int = 0
    method: str = ""
    seconds: float = 0.0
    interrupted: bool = False

    def line(self) -> str:
        if not self.todo:
            return f"{self.faces} faces, all enriched already; nothing to do"
        rate = self.photos / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.enriched} of {self.todo} faces enriched ({self.method}: landmarks "
                f"{self.landmarks}, pose from 5 keypoints {self.kps5}); {self.photos} photos, "
                f"{self.unmatched} faces not re-detected (cached box used), {self.unreadable} "
                f"photos unreadable; {rate:.1f} photos/s"
                + (" (interrupted: re-run to resume)" if self.interrupted else ""))


def detection_loader(model: str, model_root: str | None = None, providers: str | None = None,
                     det_size: int = 640) -> Callable[[], FaceBackend]:
    """A zero-argument loader of the pack's detector and landmark models (no recognition)."""
    def load() -> FaceBackend:
        from ..backends import load_backend
        return load_backend(model, model_root, providers, det_size, with_recognition=False)
    return load


def _missing(cache: FaceCache, col: str) -> np.ndarray:
    if col not in cache.faces:
        return np.ones(cache.n_faces, dtype=bool)
    values = cache.faces[col].reshape(cache.n_faces, -1)
    return ~np.isfinite(values).all(axis=1)


def faces_todo(cache: FaceCache, with_landmarks: bool) -> np.ndarray:
    """Faces still to enrich: no pose yet; with a landmark pack, also no landmarks yet."""
    todo = _missing(cache, "pose")
    if with_landmarks:
        todo |= _missing(cache, "landmark_2d_106") & _missing(cache, "landmark_3d_68")
    return todo


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a (N, 4) and b (M, 4), x1 y1 x2 y2."""
    a, b = np.asarray(a, np.float64)[:, None, :], np.asarray(b, np.float64)[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def match_faces(cached: np.ndarray, detected: np.ndarray, min_iou: float = MATCH_IOU
                ) -> np.ndarray:
    """For each cached box, the detected box it overlaps best (greedy by IoU, one-to-one),
    -1 when none reaches ``min_iou``."""
    out = np.full(len(cached), -1, dtype=np.int64)
    if len(cached) == 0 or len(detected) == 0:
        return out
    iou = box_iou(cached, detected)
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < min_iou:
            break
        if out[i] < 0 and j not in out:
            out[i] = j
    return out


def _cached_face(cache: FaceCache, r: int) -> DetectedFace:
    f = cache.faces
    return DetectedFace(bbox=f["bbox"][r].astype(np.float32), kps=f["kps"][r].astype(np.float32),
                        det_score=float(f["det_score"][r]))


def landmark_faces(backend: FaceBackend, paths: list[str], sha256: str, cache: FaceCache,
                   rows: np.ndarray) -> tuple[list[DetectedFace] | None, int]:
    """Landmarks and pose of the cached faces ``rows`` of one photo, in full-size pixels.

    ``paths``: the photo's locations, tried in order. Returns (faces in the order of
    ``rows``, how many were not re-detected); faces is None when no location can be read.
    """
    photo = None
    for path in paths:
        photo = load_photo(path, sha256, backend.det_size)
        if not photo.error:
            break
    if photo is None or photo.error:
        return None, 0
    to_full = photo.width / photo.image.shape[1]
    detected = [f.scaled(to_full) for f in backend.detect(photo.image)]
    cached = [_cached_face(cache, r) for r in rows]
    match = match_faces(np.array([c.bbox for c in cached]),
                        np.array([d.bbox for d in detected]).reshape(-1, 4))
    faces = [detected[j] if j >= 0 else c for c, j in zip(cached, match)]
    smallest = min(float(min(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1])) for f in faces)
    factor = next((f for f in (8, 4, 2) if f <= photo.factor
                   and smallest / f >= LANDMARK_MIN_FACE), 1)
    image = photo.image
    if factor != photo.factor:
        try:
            image = decode(photo.data, factor)
        except ImageError:
            return None, 0
    scale = photo.width / image.shape[1]
    local = [f.scaled(1.0 / scale) for f in faces]
    backend.landmarks(image, local)
    return [f.scaled(scale) for f in local], int(np.sum(match < 0))


def enriched_row(row: dict, face: DetectedFace | None) -> dict:
    """A cached face row with landmarks and pose from ``face`` (the landmark models), or a
    pose from its 5 keypoints when those gave none."""
    row = dict(row)
    if face is not None:
        for col in OPTIONAL_FACE_COLUMNS:
            if getattr(face, col) is not None:
                row[col] = getattr(face, col)
    if face is not None and face.pose is not None:
        row["pose"], row["pose_method"] = face.pose, POSE_METHOD_3D
    else:
        row["pose"], row["pose_method"] = pose_from_kps(row["kps"]), POSE_METHOD_KPS
    return row


def _row(cache: FaceCache, r: int) -> dict:
    return {col: cache.faces[col][r] for col in cache.faces}


class _EnrichJob(Job):
    """Enrich photo by photo (items: sha256s): all face rows of a photo are added to the
    writer together, those still to do with landmarks and pose."""

    def __init__(self, backend: FaceBackend, cache: FaceCache, todo: np.ndarray,
                 writer: SegmentWriter, s: EnrichSummary):
        self.backend, self.cache, self.todo, self.writer, self.s = backend, cache, todo, writer, s
        self.rows_of: dict[str, list[int]] = {}
        for r, h in enumerate(cache.faces["sha256"].tolist()):
            self.rows_of.setdefault(h, []).append(r)
        # every location of a photo, canonical first (files.path when no location is left)
        self.locations: dict[str, list[str]] = {}
        if backend.has_landmarks:
            self.locations = cache.locations()
            for h, p in zip(cache.files["sha256"].tolist(), cache.files["path"].tolist()):
                self.locations.setdefault(h, [p])
        self.whole = 0   # pending face rows that hold whole photos only

    def process(self, items: Iterator[str]):
        s, cache, todo = self.s, self.cache, self.todo
        for h in items:
            rows = np.array(self.rows_of[h])
            got = None
            if self.backend.has_landmarks:
                got, unmatched = landmark_faces(self.backend, self.locations.get(h, []), h,
                                                cache, rows)
                s.unmatched += unmatched
            out = []
            for k, r in enumerate(rows):
                if not todo[r]:
                    out.append(_row(cache, r))
                    continue
                face = got[k] if got is not None else None
                out.append(enriched_row(_row(cache, r), face))
                s.enriched += 1
                s.landmarks += face is not None and (face.landmark_2d_106 is not None
                                                     or face.landmark_3d_68 is not None)
                s.kps5 += out[-1]["pose_method"] == POSE_METHOD_KPS
            # all face rows of the photo, added together: a segment never holds part
            # of a photo (its faces would replace all the cached ones)
            for row in out:
                self.writer.add("faces", **row)
            self.whole = len(self.writer.pending["faces"])
            unreadable = self.backend.has_landmarks and got is None
            yield h, ERROR if unreadable else OK, ""

    def flush(self) -> None:
        self.writer.flush()
        self.whole = 0

    def on_interrupt(self) -> None:
        # drop the rows of a photo cut off half-way (faces of one sha256 come whole)
        del self.writer.pending["faces"][self.whole:]


def run_enrich(cache_path: str, load_backend_fn: Callable[[], FaceBackend], progress: bool = True,
               flush_every: int = DEFAULT_FLUSH_EVERY, model: str | None = None
               ) -> EnrichSummary:
    """Fill landmarks and pose of every cached face that lacks them (see module doc).

    ``load_backend_fn``: zero-argument loader (``detection_loader`` skips the recognition
    model); called only when some face needs work. ``model``: the pack name asked for, to
    refuse a cache of another model before loading anything.
    """
    s = EnrichSummary()
    t0 = time.monotonic()
    with cache_lock(cache_path):
        cache = load_cache(cache_path)
        s.faces = cache.n_faces
        if model:
            check_model(cache, model, cache_path=cache_path)
        # a cache whose pack has no landmark models is done once every face has a pose
        maybe_landmarks = cache.meta.get("has_landmarks") is not False
        if not faces_todo(cache, maybe_landmarks).any():
            compact_cache(cache_path)  # segments of a run killed after its last flush
            s.seconds = time.monotonic() - t0
            return s
        backend = load_backend_fn()
        check_model(cache, backend.name, backend.model_id if backend.embedding_dim else None,
                    cache_path)
        todo = faces_todo(cache, backend.has_landmarks)
        s.todo = int(todo.sum())
        s.method = POSE_METHOD_3D if backend.has_landmarks else POSE_METHOD_KPS
        if not s.todo:
            compact_cache(cache_path)
            s.seconds = time.monotonic() - t0
            return s
        writer = SegmentWriter(cache_path, cache.meta)
        todo_shas = list(dict.fromkeys(cache.faces["sha256"][todo].tolist()))  # cache order
        result = run_items(_EnrichJob(backend, cache, todo, writer, s), todo_shas, flush_every,
                           progress, f"enriching ({s.method})", "photo")
        s.photos, s.unreadable = result.recorded, result.counts[ERROR]
        s.interrupted = result.interrupted
        s.seconds = time.monotonic() - t0
        if not s.interrupted:
            compact_cache(cache_path)
    return s
