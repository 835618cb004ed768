"""An InsightFace model pack's ONNX files run without the ``insightface`` package.

The package requires the GUI build of OpenCV, which fights opencv-python-headless over the
same cv2/ folder; so `pip install .` does not ask for it, and the backend runs the pack with
this module when it is missing. What face-sets uses of InsightFace is small, and here it is,
giving the same numbers (tests/test_onnx_pack.py compares them with the package's):

* routing: which file of a pack is which model, by its inputs and outputs (model_zoo's rules:
  5+ outputs a SCRFD detector, a 192x192 input a landmark model, a square input of 112+ px
  a multiple of 16 an ArcFace recognizer; the first file of each task is used, files sorted);
* SCRFD detection: letterbox to det_size, anchor-centre decode of boxes and 5 keypoints per
  stride, score threshold, NMS at 0.4;
* ArcFace recognition: the 5 keypoints aligned onto ArcFace's template (a similarity
  transform, scikit-image's estimate), the crops through the network in one batch.

* landmark models: the face box's square (1.5 x its long side) cut to the model's input, the
  points mapped back; a 3d68 model's head pose from the affine fit of InsightFace's mean
  68-point shape (meanshape_68.json, copied from the package: MIT licence) to its points.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

NMS_THRESHOLD = 0.4          # SCRFD's IoU above which the lower-scored box is dropped
DET_MEAN, DET_STD = 127.5, 128.0
# ArcFace's five-point template for a 112 x 112 crop (eyes, nose, mouth corners)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def _normalizes_itself(model_file: str, bn_data: bool = False) -> bool:
    """Whether a graph subtracts and scales its input itself (then it takes raw pixels): a Sub
    and a Mul among its first 8 nodes (model_zoo's test; landmark models: or a bn_data)."""
    import onnx

    nodes = onnx.load(model_file).graph.node[:8]
    if bn_data and any(n.name == "bn_data" for n in nodes[:3]):
        return True
    return (any(n.name.startswith(("Sub", "_minus")) for n in nodes)
            and any(n.name.startswith(("Mul", "_mul")) for n in nodes))


def matrix_to_angles(r: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in degrees of a rotation matrix, InsightFace's decomposition."""
    import math

    sy = math.hypot(r[0, 0], r[1, 0])
    if sy > 1e-6:
        x = math.atan2(r[2, 1], r[2, 2])
        z = math.atan2(r[1, 0], r[0, 0])
    else:
        x = math.atan2(-r[1, 2], r[1, 1])
        z = 0.0
    y = math.atan2(-r[2, 0], sy)
    return math.degrees(x), math.degrees(y), math.degrees(z)


def task_of(session) -> str | None:
    """The task of a model by its inputs and outputs (InsightFace's model_zoo router)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape
    if len(outputs) >= 5:
        return "detection"
    if shape[2] == 192 and shape[3] == 192:
        return "landmark"
    if shape[2] == 96 and shape[3] == 96:
        return "genderage"
    if len(inputs) == 2 and shape[2] == 128 and shape[3] == 128:
        return "swapper"
    if isinstance(shape[2], int) and shape[2] == shape[3] and shape[2] >= 112 \
            and shape[2] % 16 == 0:
        return "recognition"
    return None


def norm_crop(image: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """The face of ``image`` aligned by its 5 keypoints onto ArcFace's template, size x size
    (InsightFace's face_align.norm_crop)."""
    import cv2
    from skimage.transform import SimilarityTransform

    if size % 112 == 0:
        ratio, shift = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        shift = 8.0 * ratio
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += shift
    src = np.asarray(kps)
    if hasattr(SimilarityTransform, "from_estimate"):   # scikit-image 0.26+: estimate() warns
        tform = SimilarityTransform.from_estimate(src, dst)
        m = tform.params[0:2, :] if tform else np.full((2, 3), np.nan)   # as estimate() fails
    else:
        tform = SimilarityTransform()
        tform.estimate(src, dst)
        m = tform.params[0:2, :]
    return cv2.warpAffine(image, m, (size, size), borderValue=0.0)


class Detector:
    """A SCRFD detector: ``detect(image)`` -> (N x 5 boxes with score, N x 5 x 2 keypoints or
    None), best score first."""

    def __init__(self, session, model_file: str):
        self.session, self.model_file = session, model_file
        self.taskname = "detection"
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        fixed = inp.shape[2:4]
        self.fixed_size = (tuple(fixed[::-1]) if all(isinstance(v, int) for v in fixed)
                           else None)
        outputs = session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.batched = len(outputs[0].shape) == 3
        n = len(outputs)
        if n not in (6, 9, 10, 15):
            raise ValueError(f"{model_file}: {n} outputs, not a SCRFD detector's 6, 9, 10 or 15")
        self.fmc = 3 if n in (6, 9) else 5
        self.strides = [8, 16, 32] if self.fmc == 3 else [8, 16, 32, 64, 128]
        self.num_anchors = 2 if self.fmc == 3 else 1
        self.use_kps = n in (9, 15)
        self.input_size = (640, 640)
        # None for a free input size, as InsightFace's SCRFD says: a caller may then detect at
        # another size (the backend's fitted input on CPU), each size on its own fixed copy
        self.static_input_size = self.fixed_size
        self.threshold = 0.5
        self._centres: dict[tuple, np.ndarray] = {}
        self._sessions: dict[tuple[int, int], object] = {}   # input size -> fixed copy
        self._session_args: tuple = ()

    def prepare(self, det_size: tuple[int, int], threshold: float, providers: list[str],
                sess_options) -> None:
        """Detect at ``det_size`` (width, height) with this score threshold. A graph with a
        free input size runs through a copy of it with that size fixed, as InsightFace's
        SCRFD does (ONNX Runtime computes a fixed-shape graph slightly differently)."""
        self.input_size = self.fixed_size or tuple(det_size)
        self.threshold = threshold
        if self.fixed_size is None:
            self._session_args = (providers, sess_options)
            self.session = self._session_for(self.input_size)

    def _session_for(self, size: tuple[int, int]):
        """The session for input ``size`` (width, height): the graph itself when its size is
        fixed, else a fixed copy per size (a few: photos come in a few aspect ratios)."""
        if self.fixed_size is not None or not self._session_args:
            return self.session
        if size not in self._sessions:
            import onnxruntime

            providers, sess_options = self._session_args
            if len(self._sessions) >= 8:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[size] = onnxruntime.InferenceSession(
                _fixed_shape_model(self.model_file, size, self.input_name),
                sess_options=sess_options, providers=providers)
        return self._sessions[size]

    def _forward(self, det_img: np.ndarray, session):
        import cv2

        h, w = det_img.shape[:2]
        blob = cv2.dnn.blobFromImage(det_img, 1.0 / DET_STD, (w, h),
                                     (DET_MEAN, DET_MEAN, DET_MEAN), swapRB=True)
        outs = session.run(self.output_names,
                                {self.input_name: np.ascontiguousarray(blob, np.float32)})
        scores_all, boxes_all, kps_all = [], [], []
        for k, stride in enumerate(self.strides):
            pick = (lambda a: a[0]) if self.batched else (lambda a: a)
            scores = pick(outs[k])
            box_pred = pick(outs[k + self.fmc]) * stride
            key = (h // stride, w // stride, stride)
            centres = self._centres.get(key)
            if centres is None:
                grid = np.stack(np.mgrid[:key[0], :key[1]][::-1], axis=-1).astype(np.float32)
                centres = (grid * stride).reshape((-1, 2))
                if self.num_anchors > 1:
                    centres = np.stack([centres] * self.num_anchors, axis=1).reshape((-1, 2))
                if len(self._centres) < 100:
                    self._centres[key] = centres
            keep = np.where(scores >= self.threshold)[0]
            boxes = np.stack([centres[:, 0] - box_pred[:, 0], centres[:, 1] - box_pred[:, 1],
                              centres[:, 0] + box_pred[:, 2], centres[:, 1] + box_pred[:, 3]],
                             axis=-1)
            scores_all.append(scores[keep])
            boxes_all.append(boxes[keep])
            if self.use_kps:
                kps_pred = pick(outs[k + self.fmc * 2]) * stride
                pts = np.empty((kps_pred.shape[0], kps_pred.shape[1]), dtype=kps_pred.dtype)
                pts[:, 0::2] = centres[:, 0:1] + kps_pred[:, 0::2]
                pts[:, 1::2] = centres[:, 1:2] + kps_pred[:, 1::2]
                kps_all.append(pts.reshape((pts.shape[0], -1, 2))[keep])
        return scores_all, boxes_all, kps_all

    def detect(self, image: np.ndarray, max_num: int = 0,
               input_size: tuple[int, int] | None = None):
        """Faces of ``image`` (BGR), detected at ``input_size`` (width, height; default the
        prepared size; another one only for a graph with a free input size); ``max_num`` is
        accepted for InsightFace's signature and must be 0 (all faces)."""
        import cv2

        if max_num:
            raise ValueError("max_num: only 0 (every face) is supported")
        size = tuple(input_size) if input_size and self.fixed_size is None else self.input_size
        in_w, in_h = size
        im_ratio = image.shape[0] / image.shape[1]
        if im_ratio > in_h / in_w:
            new_h = in_h
            new_w = int(new_h / im_ratio)
        else:
            new_w = in_w
            new_h = int(new_w * im_ratio)
        det_scale = new_h / image.shape[0]
        det_img = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        det_img[:new_h, :new_w, :] = cv2.resize(image, (new_w, new_h))
        scores, boxes, kps = self._forward(det_img, self._session_for(size))
        if sum(s.size for s in scores) == 0:
            return (np.empty((0, 5), np.float32),
                    np.empty((0, 5, 2), np.float32) if self.use_kps else None)
        order = np.argsort(-np.vstack(scores).ravel(), kind="stable")
        det = np.hstack((np.vstack(boxes) / det_scale, np.vstack(scores)))
        det = det.astype(np.float32, copy=False)[order]
        points = (np.vstack(kps) / det_scale)[order] if self.use_kps else None
        keep = _nms(det, NMS_THRESHOLD)
        return det[keep], (points[keep] if points is not None else None)


def _fixed_shape_model(model_file: str, size: tuple[int, int], input_name: str) -> bytes:
    """The SCRFD graph with its input fixed to ``size`` (width, height) and its outputs to
    the candidates of that size (InsightFace's _static_scrfd_model)."""
    import onnx

    width, height = size
    model = onnx.load_model(model_file, load_external_data=True)
    onnx.external_data_helper.convert_model_from_external_data(model)

    def fix(dim, value: int) -> None:
        dim.ClearField("dim_param")
        dim.dim_value = int(value)

    dims = {v.name: v for v in model.graph.input}[input_name].type.tensor_type.shape.dim
    fix(dims[2], height)
    fix(dims[3], width)
    fmc = 3 if len(model.graph.output) in (6, 9) else 5
    strides, anchors = ((8, 16, 32), 2) if fmc == 3 else ((8, 16, 32, 64, 128), 1)
    for k, output in enumerate(model.graph.output):
        dims = output.type.tensor_type.shape.dim
        if len(dims) == 3:
            fix(dims[0], 1)
        stride = strides[k % fmc]
        fix(dims[len(dims) - 2], (height // stride) * (width // stride) * anchors)
        fix(dims[-1], (1, 4, 10)[k // fmc])   # score, box, 5 keypoints
    return model.SerializeToString()


def _nms(dets: np.ndarray, thresh: float) -> list[int]:
    """Greedy non-maximum suppression (InsightFace's, with its +1 pixel areas)."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]])
                       + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]])
                       + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= thresh)[0] + 1]
    return keep


class Recognizer:
    """An ArcFace recognizer: ``get_feat(crops)`` -> one embedding row per aligned crop."""

    def __init__(self, session, model_file: str):
        self.session, self.model_file = session, model_file
        self.taskname = "recognition"
        self.input_mean, self.input_std = ((0.0, 1.0) if _normalizes_itself(model_file)
                                           else (127.5, 127.5))
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = tuple(inp.shape[2:4][::-1])
        outputs = session.get_outputs()
        if len(outputs) != 1:
            raise ValueError(f"{model_file}: {len(outputs)} outputs, not a recognizer's one")
        self.output_names = [outputs[0].name]
        self.output_shape = outputs[0].shape

    def get_feat(self, crops: list[np.ndarray]) -> np.ndarray:
        import cv2

        blob = cv2.dnn.blobFromImages(crops, 1.0 / self.input_std, self.input_size,
                                      (self.input_mean,) * 3, swapRB=True)
        return self.session.run(self.output_names,
                                {self.input_name: np.ascontiguousarray(blob, np.float32)})[0]


class Landmarks:
    """A landmark model (landmark_2d_106, landmark_3d_68): ``get(image, bbox)`` -> (points,
    pose or None), points in ``image``'s pixels; pose (pitch, yaw, roll) for 3d68."""

    def __init__(self, session, model_file: str):
        self.session, self.model_file = session, model_file
        self.input_mean, self.input_std = ((0.0, 1.0) if _normalizes_itself(model_file, True)
                                           else (127.5, 128.0))
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = tuple(inp.shape[2:4][::-1])
        outputs = session.get_outputs()
        if len(outputs) != 1:
            raise ValueError(f"{model_file}: {len(outputs)} outputs, not a landmark model's one")
        self.output_names = [outputs[0].name]
        width = outputs[0].shape[1]
        self.with_pose = width == 3309
        self.dim, self.count = (3, 68) if self.with_pose else (2, width // 2)
        self.taskname = f"landmark_{self.dim}d_{self.count}"

    def get(self, image: np.ndarray, bbox) -> tuple[np.ndarray, np.ndarray | None]:
        import cv2
        from skimage.transform import SimilarityTransform

        size = self.input_size[0]
        w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
        scale = size / (max(w, h) * 1.5)
        cx, cy = (bbox[2] + bbox[0]) / 2 * scale, (bbox[3] + bbox[1]) / 2 * scale
        # InsightFace's face_align.transform with no rotation: scale, centre, shift
        t = (SimilarityTransform(scale=scale) + SimilarityTransform(translation=(-cx, -cy))
             + SimilarityTransform(rotation=0.0)
             + SimilarityTransform(translation=(size / 2, size / 2)))
        m = t.params[0:2]
        crop = cv2.warpAffine(image, m, (size, size), borderValue=0.0)
        blob = cv2.dnn.blobFromImage(crop, 1.0 / self.input_std, (size, size),
                                     (self.input_mean,) * 3, swapRB=True)
        pred = self.session.run(self.output_names, {self.input_name: blob})[0][0]
        pred = pred.reshape((-1, 3) if pred.shape[0] >= 3000 else (-1, 2))
        if self.count < pred.shape[0]:
            pred = pred[-self.count:, :]
        pred[:, 0:2] += 1
        pred[:, 0:2] *= size // 2
        if pred.shape[1] == 3:
            pred[:, 2] *= size // 2
        back = cv2.invertAffineTransform(m)
        # InsightFace's trans_points: x, y through the inverse in float32; z scaled
        pts = np.zeros(pred.shape, dtype=np.float32)
        for i, p in enumerate(pred):
            pts[i, 0:2] = np.dot(back, np.array([p[0], p[1], 1.0], dtype=np.float32))[0:2]
        if pred.shape[1] == 3:
            pts[:, 2] = pred[:, 2] * np.sqrt(back[0][0] ** 2 + back[0][1] ** 2)
        if not self.with_pose:
            return pts, None
        mean = _mean_shape()
        affine = np.linalg.lstsq(np.hstack((mean, np.ones([mean.shape[0], 1]))), pts,
                                 rcond=None)[0].T
        r1, r2 = affine[0:1, :3], affine[1:2, :3]
        r1, r2 = r1 / np.linalg.norm(r1), r2 / np.linalg.norm(r2)
        rotation = np.concatenate((r1, r2, np.cross(r1, r2)), 0)
        return pts, np.array(matrix_to_angles(rotation), dtype=np.float32)


def _mean_shape() -> np.ndarray:
    """InsightFace's mean 68-point 3D face (68 x 3), the 3d68 model's pose reference."""
    import json

    with open(Path(__file__).with_name("meanshape_68.json"), encoding="utf-8") as fh:
        return np.array(json.load(fh)["meanshape_68"], dtype=np.float32)


def load_models(pack: str | Path, providers: list[str], sess_options, allowed=None) -> dict:
    """Task -> model of the pack's ONNX files (the first file of each task, names sorted),
    as InsightFace's FaceAnalysis picks them: detection, recognition, landmark_2d_106,
    landmark_3d_68 (``allowed``: only these tasks)."""
    import onnxruntime

    kinds = {"detection": Detector, "recognition": Recognizer, "landmark": Landmarks}
    models: dict = {}
    for path in sorted(Path(pack).glob("*.onnx")):
        session = onnxruntime.InferenceSession(str(path), sess_options=sess_options,
                                               providers=providers)
        kind = kinds.get(task_of(session))
        if kind is None:
            continue
        model = kind(session, str(path))
        if model.taskname not in models and (allowed is None or model.taskname in allowed):
            models[model.taskname] = model
    return models
