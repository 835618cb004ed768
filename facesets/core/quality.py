"""Composite face quality for swap-ready export: which crops of a person a swap tool should see.

score = 0.30 frontality + 0.20 det_score + 0.20 symmetry + 0.15 size + 0.15 sharpness,
each component normalised to [0, 1] (1 = best):
  frontality  from the head pose (the cache's, or estimated from the 5 keypoints when the
              cache has none): (1 - |yaw| / 60) * (1 - |pitch| / 45), each factor clipped at 0;
              roll is ignored (the recognizer's alignment undoes it)
  det_score   the detector's confidence rescaled from its 0.5 acceptance floor:
              (det_score - 0.5) / 0.5
  symmetry    how evenly the face spreads left and right of the nose tip, measured along the
              eye line (so roll does not count): min(left, right) / max(left, right) where the
              extents come from landmark_2d_106 (outermost contour points) when cached, else
              from the eye and mouth-corner keypoints; a turned face shrinks one side
  size        face_short / size_full, size_full = out_size / (1 + 2 pad_ratio): the face size
              at which the crop needs no upscaling (256 px for 512 px crops at pad 0.5)
  sharpness   the cached blur value (variance of the Laplacian on the face resampled to
              128 x 128, see imageio.face_blur) on a log scale: 20 -> 0, 400 -> 1
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pose import pose_from_kps

WEIGHTS = {"frontality": 0.30, "det_score": 0.20, "symmetry": 0.20, "size": 0.15,
           "sharpness": 0.15}
YAW_ZERO, PITCH_ZERO = 60.0, 45.0      # degrees at which frontality reaches 0
DET_FLOOR = 0.5                        # the detector's acceptance threshold
BLUR_ZERO, BLUR_FULL = 20.0, 400.0     # Laplacian variance at sharpness 0 and 1


@dataclass
class FaceQuality:
    components: dict[str, float]
    score: float
    pose: tuple[float, float, float]
    pose_method: str


def frontality(pitch: float, yaw: float) -> float:
    if not (np.isfinite(pitch) and np.isfinite(yaw)):
        return 0.0
    return float(max(0.0, 1 - abs(yaw) / YAW_ZERO) * max(0.0, 1 - abs(pitch) / PITCH_ZERO))


def det_component(det_score: float) -> float:
    return float(np.clip((det_score - DET_FLOOR) / (1 - DET_FLOOR), 0, 1))


def symmetry(kps: np.ndarray, landmarks: np.ndarray | None = None) -> float:
    """Left/right balance about the nose tip along the eye line (1 = symmetric)."""
    kps = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    if not np.all(np.isfinite(kps)):
        return 0.0
    axis = kps[1] - kps[0]                      # eye line, image-left eye to image-right
    norm = np.linalg.norm(axis)
    if norm < 1e-6:
        return 0.0
    axis /= norm
    nose = kps[2]
    if landmarks is not None and np.all(np.isfinite(landmarks)):
        along = (np.asarray(landmarks, dtype=np.float64).reshape(-1, 2) - nose) @ axis
        left, right = -along.min(), along.max()
    else:
        along = (kps[[0, 3, 1, 4]] - nose) @ axis
        left, right = -(along[0] + along[1]) / 2, (along[2] + along[3]) / 2
    if left <= 0 or right <= 0:
        return 0.0
    return float(min(left, right) / max(left, right))


def size_component(face_short: float, out_size: int, pad_ratio: float) -> float:
    full = out_size / (1 + 2 * pad_ratio)
    return float(np.clip(face_short / full, 0, 1))


def sharpness(blur: float) -> float:
    if not np.isfinite(blur) or blur <= 0:
        return 0.0
    return float(np.clip(np.log(blur / BLUR_ZERO) / np.log(BLUR_FULL / BLUR_ZERO), 0, 1))


def face_pose(pose, pose_method: str, kps) -> tuple[tuple[float, float, float], str]:
    """The cached pose, or the 5-keypoint estimate when the cache has none."""
    pose = np.asarray(pose, dtype=np.float64).reshape(3)
    if np.all(np.isfinite(pose)):
        return tuple(float(v) for v in pose), pose_method or "cached"
    from .pose import POSE_METHOD_KPS
    return pose_from_kps(kps), POSE_METHOD_KPS


def face_quality(row: dict, out_size: int = 512, pad_ratio: float = 0.5) -> FaceQuality:
    """Quality of one cached face; ``row`` holds its cache columns (bbox, kps, pose, ...)."""
    pose, method = face_pose(row["pose"], row.get("pose_method", ""), row["kps"])
    lm = row.get("landmark_2d_106")
    comp = {"frontality": frontality(pose[0], pose[1]),
            "det_score": det_component(float(row["det_score"])),
            "symmetry": symmetry(row["kps"], lm),
            "size": size_component(float(row["face_short"]), out_size, pad_ratio),
            "sharpness": sharpness(float(row["blur"]))}
    score = sum(WEIGHTS[k] * v for k, v in comp.items())
    return FaceQuality({k: round(v, 4) for k, v in comp.items()}, round(float(score), 4),
                       pose, method)


def cache_row(faces: dict, r: int) -> dict:
    """The columns of cache face row ``r`` that quality needs."""
    return {k: faces[k][r] for k in ("bbox", "kps", "pose", "pose_method", "det_score",
                                     "face_short", "blur", "landmark_2d_106") if k in faces}
