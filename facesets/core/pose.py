"""Head pose (pitch, yaw, roll in degrees) and where it came from.

Two sources, recorded in the cache's ``pose_method`` column:
  * ``POSE_METHOD_3D`` ("3d68"): InsightFace's landmark_3d_68 model gives the pose itself
    (an affine fit of its 68 3-D landmarks to its mean face shape, ``matrix2angle``);
  * ``POSE_METHOD_KPS`` ("kps5"): estimated here from the detector's 5 keypoints, for packs
    without landmark models, so frontality is always available.

The estimate fits a rigid 5-point face model (eye centres, nose tip, mouth corners; see
MODEL_5) to the keypoints with OpenCV's solvePnP, using a long focal length (close to the weak-perspective camera InsightFace fits).
Angles follow InsightFace's convention: the model frame is InsightFace's (x right, y down,
z towards the viewer), R maps it onto the image and ``matrix2angle``'s Z-Y-X decomposition
(R = Rz(roll) Ry(yaw) Rx(pitch)) gives the angles, so (0, 0, 0) is a frontal, upright face
and both methods give the same signs. Five points carry less information than 68: the
estimate is good for ranking frontality (yaw and roll within a few degrees, pitch coarser),
not for measurement.
"""
from __future__ import annotations

import math

import numpy as np

from ..backends.onnx_pack import matrix_to_angles  # InsightFace's decomposition

POSE_METHOD_KPS = "kps5"
POSE_METHOD_3D = "3d68"

# A frontal face at the 5 detector keypoints. x, y: the ArcFace alignment template (the
# keypoints of the frontal, upright face every InsightFace recognizer is trained on),
# symmetrised and scaled to InsightFace's mean 68-point shape (eye distance 0.532); z: the
# depth of the same points in that mean shape (eyes = mean of points 36-41 / 42-47, nose
# tip 30, mouth corners 48 / 54). Frame: x right, y down, z towards the viewer. The template
# defines "frontal" (the mean shape's own nose tip sits higher than SCRFD's nose keypoint).
MODEL_5 = np.array([
    [-0.266, -0.307, 0.315],   # eye on the image's left
    [0.266, -0.307, 0.315],    # eye on the image's right
    [0.000, 0.000, 0.599],     # nose tip
    [-0.220, 0.307, 0.378],    # mouth corner, image left
    [0.220, 0.307, 0.378],     # mouth corner, image right
], dtype=np.float64)

# focal length in units of the keypoints' spread: long, so the camera is close to the
# weak-perspective one InsightFace fits (and to a face seen at a normal distance)
_FOCAL_SPREADS = 30.0
# OpenCV's camera frame has z away from the viewer: flip z to go between the two frames
_FLIP_Z = np.diag([1.0, 1.0, -1.0])


def angles_to_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """The rotation Rz(roll) Ry(yaw) Rx(pitch) (degrees): the inverse of matrix_to_angles."""
    x, y, z = (math.radians(a) for a in (pitch, yaw, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def pose_from_kps(kps) -> tuple[float, float, float]:
    """Estimate (pitch, yaw, roll) in degrees from 5 keypoints (eyes, nose, mouth corners).

    Returns NaNs when the keypoints are missing or degenerate.
    """
    import cv2

    pts = np.ascontiguousarray(np.asarray(kps, dtype=np.float64).reshape(-1, 2))
    nan = (float("nan"),) * 3
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        return nan
    centre = pts.mean(axis=0)
    spread = float(np.sqrt(((pts - centre) ** 2).sum(axis=1).mean()))
    if spread < 1e-3:
        return nan
    model = MODEL_5 @ _FLIP_Z                     # into OpenCV's frame (z away)
    model_spread = float(np.sqrt(((model - model.mean(0)) ** 2).sum(axis=1).mean()))
    f = _FOCAL_SPREADS * spread
    camera = np.array([[f, 0, centre[0]], [0, f, centre[1]], [0, 0, 1]], dtype=np.float64)
    # start from a frontal face at the distance that matches the keypoints' size: the
    # iteration then settles on the solution nearest frontal (5 points can be ambiguous)
    rvec = np.zeros((3, 1))
    tvec = np.array([[0.0], [0.0], [f * model_spread / spread]])
    ok, rvec, tvec = cv2.solvePnP(model, pts, camera, None, rvec, tvec,
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or not np.all(np.isfinite(rvec)):
        return nan
    r_cv, _ = cv2.Rodrigues(rvec)
    return matrix_to_angles(_FLIP_Z @ r_cv @ _FLIP_Z)
