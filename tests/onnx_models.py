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
