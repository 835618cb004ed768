"""Per-photo analysis shared by in-process ``embed`` and the GPU embed worker.

Stages, so that reading and decoding (threads) overlap with inference (main thread):
  ``load_photo``     read the bytes, check the header, decode at a reduced JPEG scale;
  ``detect_photo``   detect on that decode shrunk to the detector input, and choose the
                     decode scale recognition needs;
  ``finer_image``    decode again finer, only if some face needs it (threads again);
  ``describe_photo`` landmarks, embeddings and blur at that scale.
``analyze_photo`` runs the three in one thread.
Importing this module pulls in only numpy, OpenCV and Pillow (worker-safe).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..backends.base import DetectedFace, FaceBackend
from ..formats.cache import SegmentWriter
from ..io.imageio import (BLUR_SIZE, DEFAULT_MAX_PIXELS, ImageError, decode, face_blur,
                          read_header, scale_for)
from ..runtime.jobs import ERROR, NOFACE, OK
from ..sources.folder import EmbedPlan, Listed, read_file

# The 5-point template faces are aligned to for recognition (InsightFace's arcface_dst,
# 112 x 112 crop). How much the alignment magnifies a face in a given decode decides whether
# that decode loses anything: up to MAX_MAGNIFICATION the embedding agrees with the one from
# a full decode as closely as for faces that are only ever shrunk (cosine ~0.99 either way:
# the two paths differ by resampling alone; `python bench/bench_decode_scale.py`); beyond it,
# agreement drops (0.98 at 1.5, 0.93 at 2-3), so embed decodes finer for such faces.
MAX_MAGNIFICATION = 1.25
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
_TEMPLATE_RMS = float(np.sqrt(((ARCFACE_TEMPLATE - ARCFACE_TEMPLATE.mean(0)) ** 2).sum(1).mean()))

# threads reading and decoding photos ahead of the model (embed, the embed worker): one
# more than the cores, at most 8. A GPU worker's model waits on decoding, so a machine with
# more cores wants more of them; on 2 cores 3 and 2 tie (docs/benchmarks.md, "Idle figures")
DECODE_WORKERS = min(8, (os.cpu_count() or 2) + 1)


# The first decode is the coarsest JPEG scale whose long side is still >= 2 x the detector
# input: entropy decoding dominates JPEG decode time whatever the scale (a 12-MP photo:
# ~38 ms at 1/4, ~43 ms at 1/2, ~80 ms full), so 1/2 costs little more than 1/4 and lets
# recognition use the same decode for faces down to ~200 px, without a second decode.
LOAD_SIDE_PER_DET = 2


def detector_input(image: np.ndarray, det_size: int) -> np.ndarray:
    """The decode shrunk to the detector's input size, without aliasing (Gaussian halvings,
    then area averaging: 3x cheaper than area averaging from the start). The detector
    would shrink it to det_size anyway, with a plain bilinear resize."""
    import cv2  # here, not at module import: `--help` loads no OpenCV
    while max(image.shape[:2]) >= 2 * det_size:
        image = cv2.pyrDown(image)
    long_side = max(image.shape[:2])
    if long_side > det_size:
        k = det_size / long_side
        image = cv2.resize(image, (max(1, round(image.shape[1] * k)),
                                   max(1, round(image.shape[0] * k))),
                           interpolation=cv2.INTER_AREA)
    return image


def alignment_scale(kps: np.ndarray) -> float:
    """How much the recognition alignment magnifies this face (> 1 means upsampling)."""
    spread = float(np.sqrt(((kps - kps.mean(0)) ** 2).sum(1).mean()))
    return _TEMPLATE_RMS / spread if spread > 0 else np.inf


@dataclass
class LoadedPhoto:
    path: str
    sha256: str
    data: bytes | None = None
    width: int = 0
    height: int = 0
    image: np.ndarray | None = None   # decoded at 1/factor
    det_image: np.ndarray | None = None  # ``image`` shrunk to the detector input
    factor: int = 1
    error: str = ""


@dataclass
class AnalyzedFace:
    face: DetectedFace     # geometry in full-size oriented pixels
    face_short: float
    blur: float


@dataclass
class PhotoResult:
    path: str
    sha256: str
    width: int = 0
    height: int = 0
    status: str = "noface"            # face | noface | error
    error: str = ""
    faces: list[AnalyzedFace] = field(default_factory=list)


def load_photo(path: str, sha256: str, det_size: int,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               read: Callable[[str], bytes] = read_file) -> LoadedPhoto:
    """Read and decode for detection; never raises for a bad file (sets ``error``).

    ``path`` is the item's id; ``read`` gives its bytes: a photo source's ``read_bytes``
    (sources/base.py), by default the file at ``path``."""
    photo = LoadedPhoto(path=path, sha256=sha256)
    try:
        photo.data = read(path)
        header = read_header(photo.data, max_pixels)
        photo.width, photo.height = header.width, header.height
        photo.factor = scale_for(max(header.width, header.height), LOAD_SIDE_PER_DET * det_size)
        photo.image = decode(photo.data, photo.factor)
        photo.det_image = detector_input(photo.image, det_size)  # here: off the model's thread
    except FileNotFoundError:
        photo.error = "file vanished before it could be read"
    except PermissionError:
        photo.error = "permission denied"
    except IsADirectoryError:
        photo.error = "is a directory"
    except ImageError as exc:
        photo.error = str(exc)
    except (OSError, MemoryError) as exc:
        photo.error = f"read error ({type(exc).__name__}: {exc})"
    if photo.error:
        photo.data = photo.image = photo.det_image = None
    return photo


@dataclass
class DetectedPhoto:
    """A photo between detection and recognition (see ``detect_photo``)."""

    photo: LoadedPhoto
    faces: list[DetectedFace]         # full-size oriented pixels
    rec_factor: int                   # decode scale recognition needs
    result: PhotoResult

    @property
    def needs_finer(self) -> bool:
        """Recognition needs a finer decode than the one loaded."""
        return (self.result.status != "error" and bool(self.faces)
                and self.rec_factor != self.photo.factor)


def recognition_factor(faces: list[DetectedFace], det_factor: int) -> int:
    """The coarsest decode scale (no coarser than the loaded one) at which the alignment
    magnifies no face beyond MAX_MAGNIFICATION and every face spans at least BLUR_SIZE px
    (for a scale-free blur)."""
    for f in (8, 4, 2):
        if f > det_factor:
            continue
        if all(alignment_scale(x.kps) * f <= MAX_MAGNIFICATION and
               min(x.bbox[2] - x.bbox[0], x.bbox[3] - x.bbox[1]) / f >= BLUR_SIZE
               for x in faces):
            return f
    return 1


def detect_photo(backend: FaceBackend, photo: LoadedPhoto) -> DetectedPhoto:
    """Detect on the detection-scale decode; decide the scale recognition needs."""
    result = PhotoResult(path=photo.path, sha256=photo.sha256,
                         width=photo.width, height=photo.height)
    if photo.error:
        result.status, result.error = "error", photo.error
        return DetectedPhoto(photo, [], photo.factor, result)
    image = photo.det_image if photo.det_image is not None else photo.image
    to_full = photo.width / image.shape[1]
    faces = [f.scaled(to_full) for f in backend.detect(image)]
    rec = recognition_factor(faces, photo.factor) if faces else photo.factor
    return DetectedPhoto(photo, faces, rec, result)


def describe_photo(backend: FaceBackend, det: DetectedPhoto,
                   image: np.ndarray | None = None) -> PhotoResult:
    """Landmarks, embeddings and blur of the detected faces on ``image`` (the decode at
    ``det.rec_factor``; the detection decode when that is the same scale)."""
    result = det.result
    if result.status == "error" or not det.faces:
        return result
    image = det.photo.image if image is None else image
    to_full = det.photo.width / image.shape[1]
    local = [f.scaled(1.0 / to_full) for f in det.faces]
    backend.landmarks(image, local)
    backend.embed(image, local)
    for f in local:
        blur = face_blur(image, f.bbox)
        full = f.scaled(to_full)
        short = float(min(full.bbox[2] - full.bbox[0], full.bbox[3] - full.bbox[1]))
        result.faces.append(AnalyzedFace(face=full, face_short=short, blur=blur))
    result.status = "face"
    return result


def finer_image(det: DetectedPhoto) -> np.ndarray | None:
    """The decode recognition needs, or None when the detection decode serves."""
    if not det.needs_finer:
        return None
    return decode(det.photo.data, det.rec_factor)


def analyze_photo(backend: FaceBackend, photo: LoadedPhoto) -> PhotoResult:
    """Detect, describe and embed the faces of a loaded photo (one thread)."""
    det = detect_photo(backend, photo)
    try:
        image = finer_image(det)
    except ImageError as exc:
        det.result.status, det.result.error = "error", str(exc)
        return det.result
    return describe_photo(backend, det, image)


def job_status(result: PhotoResult) -> str:
    """The job loop's status of an analysed photo (runtime.jobs: OK, NOFACE, ERROR)."""
    return {"face": OK, "noface": NOFACE}.get(result.status, ERROR)


def face_row(result: PhotoResult, i: int, af: AnalyzedFace) -> dict:
    """A cache ``faces`` row for one analysed face (see facesets.formats.cache.FACE_COLUMNS)."""
    f = af.face
    pose_method = "3d68" if f.pose is not None else ""
    return {"sha256": result.sha256, "index": i, "embedding": f.embedding, "bbox": f.bbox,
            "kps": f.kps, "det_score": f.det_score, "face_short": af.face_short,
            "blur": af.blur, "pose": f.pose, "pose_method": pose_method,
            "landmark_2d_106": f.landmark_2d_106, "landmark_3d_68": f.landmark_3d_68}


def file_row(result: PhotoResult) -> dict:
    """A cache ``files`` row for one analysed photo."""
    return {"sha256": result.sha256, "path": result.path, "width": result.width,
            "height": result.height, "status": result.status, "error": result.error}


def path_row(path: str, sha256: str, size: int, mtime_ns: int, error: str = "") -> dict:
    """A cache ``paths`` row; size and mtime are those seen when the file was hashed."""
    return {"path": path, "sha256": sha256, "size": size, "mtime_ns": mtime_ns, "error": error}


def iter_analyzed(backend: FaceBackend, items: Iterable[Listed], workers: int = DECODE_WORKERS,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[PhotoResult]:
    """Analyse photos, yielding results in input order.

    Reading + detection-scale decoding and the finer decodes some photos need run in a pool
    of ``workers`` threads, ahead of and beside inference in this thread: while the model
    looks at one photo, the next ones are being read and decoded.
    """
    items = iter(items)
    workers = max(1, workers)      # a worker's --workers 0 (its serial loop): one thread
    window = max(2, 2 * workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        loading: deque = deque()   # futures of load_photo, input order
        detected: deque = deque()  # (DetectedPhoto, future of its finer decode | None)

        def fill():
            while len(loading) + len(detected) < window + 2:
                item = next(items, None)
                if item is None:
                    return
                loading.append(pool.submit(load_photo, item.path, item.sha256,
                                           backend.det_size, max_pixels))

        fill()
        while loading or detected:
            head = detected[0] if detected else None
            if head is not None and (head[1] is None or head[1].done() or not loading):
                detected.popleft()
                det, future = head
                try:
                    image = future.result() if future is not None else None
                except ImageError as exc:
                    det.result.status, det.result.error = "error", str(exc)
                    yield det.result
                else:
                    yield describe_photo(backend, det, image)
                fill()
                continue
            det = detect_photo(backend, loading.popleft().result())
            detected.append((det, pool.submit(finer_image, det) if det.needs_finer else None))
            fill()


def record_result(writer: SegmentWriter, result: PhotoResult, item: Listed,
                  aliases: list[Listed]) -> None:
    """Append one analysed photo (file row, its faces, its paths) to the writer."""
    writer.add("files", **file_row(result))
    for i, af in enumerate(result.faces):
        writer.add("faces", **face_row(result, i, af))
    for it in [item] + aliases:
        writer.add("paths", **path_row(it.path, it.sha256, it.size, it.mtime_ns))


def record_plan_paths(writer: SegmentWriter, plan: EmbedPlan) -> None:
    """Paths that need no embedding: copies of known content and unhashable files."""
    for it in plan.aliases:
        writer.add("paths", **path_row(it.path, it.sha256, it.size, it.mtime_ns))
    for it in plan.unreadable:
        writer.add("paths", **path_row(it.path, "", it.size, it.mtime_ns, it.error))
