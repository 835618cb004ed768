"""Small ONNX graphs the tests build: stand-ins for model files we cannot download.

InsightFace routes an ONNX file by its shapes: input 192 x 192 is a landmark model, an
output of 212 values is landmark_2d_106, 3309 values landmark_3d_68 (with pose). These
graphs have those shapes and real (if meaningless) weights, so InsightFace loads and runs
them exactly as it would buffalo_l's 2d106det.onnx and 1k3d68.onnx.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def landmark_model(path: Path, outputs: int, seed: int = 0) -> Path:
    """input [1, 3, 192, 192] -> mean colour -> dense -> tanh * 0.6 -> [1, outputs]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 1, (3, outputs)).astype(np.float32), "w")
    half = numpy_helper.from_array(np.array(0.6, np.float32), "scale")
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["dense"]),
        helper.make_node("Tanh", ["dense"], ["squashed"]),
        helper.make_node("Mul", ["squashed", "scale"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes, "landmark_standin",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, outputs])],
        initializer=[w, half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def pack_with_landmarks(base_pack: Path, dest: Path) -> Path:
    """A copy of ``base_pack`` (detector + recognizer) plus 2d106 and 3d68 stand-ins."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for f in base_pack.glob("*.onnx"):
        shutil.copy2(f, dest / f.name)
    landmark_model(dest / "2d106det.onnx", 212, seed=1)
    landmark_model(dest / "1k3d68.onnx", 3309, seed=2)
    return dest


# the occlusion classifier stand-in: logits [clean, occluded] = [0, GAIN * (BIAS - m)], m the
# mean of the normalised lower half of the 224 x 224 input (ImageNet mean/std): a black lower
# half (a band over mouth and chin) gives m ~ -1.97 and p(occluded) ~ 0.98, a face < 0.3
OCCLUSION_GAIN, OCCLUSION_BIAS = 8.0, -1.5


def occlusion_classifier(path: Path, batch: int | None = None) -> Path:
    """input [N, 3, 224, 224] -> lower half -> mean -> logits [N, 2] (see above); ``batch``:
    N fixed to that number in the graph (as some exported classifiers have it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.array(value, dtype), name)

    nodes = [
        helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["lower"]),
        helper.make_node("ReduceMean", ["lower"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
        helper.make_node("Sub", ["bias", "m1"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["occluded"]),
        helper.make_node("Mul", ["m1", "zero"], ["clean"]),
        helper.make_node("Concat", ["clean", "occluded"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "occlusion_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch or "n", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch or "n", 2])],
        initializer=[const("starts", [112], np.int64), const("ends", [224], np.int64),
                     const("axes", [2], np.int64), const("one", [1], np.int64),
                     const("bias", OCCLUSION_BIAS), const("gain", OCCLUSION_GAIN),
                     const("zero", 0.0)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def recognition_model(path: Path, batch: int | str | None = "n", dim: int = 16) -> Path:
    """A stand-in recognition graph: input [N, 3, 112, 112] -> per-channel means -> a fixed
    3 x ``dim`` projection -> [N, dim]. ``batch``: the batch dimension's name, a number
    (fixed in the graph) or None (unnamed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(7).normal(size=(3, dim)).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["fc1"])]
    graph = helper.make_graph(
        nodes, "recognition_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, dim])],
        initializer=[numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def expected_occluded(rgb) -> float:
    """The stand-in's p(occluded) for a crop of one solid colour (no resize effect)."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    m = float(((np.asarray(rgb, float) / 255.0 - mean) / std).mean())
    return float(1.0 / (1.0 + np.exp(-OCCLUSION_GAIN * (OCCLUSION_BIAS - m))))
