"""Per-photo analysis shared by in-process ``embed`` and the GPU embed worker.

Two stages so that reading/decoding (threads) overlaps with inference (main thread):
  ``load_photo``     read the bytes, check the header, decode at the detection scale;
  ``analyze_photo``  detect there, decode again finer only if some face needs it, then
                     landmarks, embeddings and blur at a scale where every face spans at
                     least ``REC_MIN_FACE`` px (or at full size).
Importing this module pulls in only numpy, OpenCV and Pillow (worker-safe).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backends.base import DetectedFace, FaceBackend
from .imageio import DEFAULT_MAX_PIXELS, ImageError, decode, face_blur, read_header, scale_for

# A face this wide (px) or more in the decoded image is aligned to the 112 px recognition
# crop by downsampling only, so decoding finer would not change what the model sees.
REC_MIN_FACE = 128


@dataclass
class LoadedPhoto:
    path: str
    sha256: str
    data: bytes | None = None
    width: int = 0
    height: int = 0
    image: np.ndarray | None = None   # decoded at 1/factor
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
               max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedPhoto:
    """Read and decode for detection; never raises for a bad file (sets ``error``)."""
    photo = LoadedPhoto(path=path, sha256=sha256)
    try:
        with open(path, "rb") as fh:
            photo.data = fh.read()
        header = read_header(photo.data, max_pixels)
        photo.width, photo.height = header.width, header.height
        photo.factor = scale_for(max(header.width, header.height), det_size)
        photo.image = decode(photo.data, photo.factor)
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
        photo.data = photo.image = None
    return photo


def analyze_photo(backend: FaceBackend, photo: LoadedPhoto) -> PhotoResult:
    """Detect, describe and embed the faces of a loaded photo."""
    result = PhotoResult(path=photo.path, sha256=photo.sha256,
                         width=photo.width, height=photo.height)
    if photo.error:
        result.status, result.error = "error", photo.error
        return result
    image = photo.image
    to_full_det = photo.width / image.shape[1]  # exact ratio (ceil in DCT scaling)
    faces = [f.scaled(to_full_det) for f in backend.detect(image)]
    if not faces:
        return result
    # the coarsest scale at which every face still spans REC_MIN_FACE px
    smallest = min(float(min(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1])) for f in faces)
    rec_factor = 1
    for f in (8, 4, 2):
        if f <= photo.factor and smallest / f >= REC_MIN_FACE:
            rec_factor = f
            break
    if rec_factor != photo.factor:
        try:
            image = decode(photo.data, rec_factor)
        except ImageError as exc:
            result.status, result.error = "error", str(exc)
            return result
    to_full = photo.width / image.shape[1]
    local = [f.scaled(1.0 / to_full) for f in faces]
    backend.landmarks(image, local)
    backend.embed(image, local)
    for f in local:
        blur = face_blur(image, f.bbox)
        full = f.scaled(to_full)
        short = float(min(full.bbox[2] - full.bbox[0], full.bbox[3] - full.bbox[1]))
        result.faces.append(AnalyzedFace(face=full, face_short=short, blur=blur))
    result.status = "face"
    return result


def face_row(result: PhotoResult, i: int, af: AnalyzedFace) -> dict:
    """A cache ``faces`` row for one analysed face (see facesets.cache.FACE_COLUMNS)."""
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
