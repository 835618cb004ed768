"""Recognition on a fixed batch (what DirectML gets): a free-dimension override of the
recognition graph's batch and faces padded to it give the outputs of the free graph; the
override is real (the session then refuses any other batch). Small graphs made here
(tests/onnx_models.py) and the real recognition graph of testpack_s."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED, needs_shared
from onnx_models import recognition_model


def _session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.unit
def test_override_fixes_the_batch_and_padding_gives_the_free_graphs_outputs(tmp_path):
    from facesets.backends.base import run_fixed_batches
    from facesets.backends.insightface_backend import fixed_batch_session

    model = recognition_model(tmp_path / "rec.onnx", batch="n")
    free = _session(model)
    fixed = fixed_batch_session(str(model), ["CPUExecutionProvider"], 4)
    assert fixed.get_inputs()[0].shape == [4, 3, 112, 112]
    crops = np.random.default_rng(1).normal(size=(6, 3, 112, 112)).astype(np.float32)
    with pytest.raises(Exception):   # the override is real: another batch is refused
        fixed.run(None, {"input": crops[:3]})
    calls = []

    def forward(chunk):
        calls.append(len(chunk))
        return fixed.run(None, {"input": chunk})[0]

    for n in (1, 3, 4, 6):
        calls.clear()
        got = run_fixed_batches(crops[:n], 4, forward)
        want = free.run(None, {"input": crops[:n]})[0]
        assert got.shape == want.shape == (n, 16)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert set(calls) == {4} and len(calls) == -(-n // 4)


@pytest.mark.unit
@pytest.mark.parametrize("batch", [None, 1])
def test_no_override_for_an_unnamed_or_numeric_batch(tmp_path, batch):
    from facesets.backends.base import batch_dim_name
    from facesets.backends.insightface_backend import fixed_batch_session

    model = recognition_model(tmp_path / "rec.onnx", batch=batch)
    assert batch_dim_name(_session(model)) is None
    assert fixed_batch_session(str(model), ["CPUExecutionProvider"], 4) is None


def test_backend_embeds_the_same_on_a_fixed_recognition_batch():
    """testpack_s's recognition graph (batch 'DynamicDimension.0'): the backend switched to
    a fixed batch of 4 (as on DirectML) embeds 1, 3 and 5 faces as the free graph does."""
    needs_shared()
    from facesets.backends.base import DetectedFace
    from facesets.backends.insightface_backend import InsightFaceBackend

    backend = InsightFaceBackend("testpack_s", str(SHARED / "insightface"),
                                 providers="CPUExecutionProvider")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)
    template = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4],
                         [70.7, 92.2]], np.float32)

    def faces(n):
        return [DetectedFace(bbox=np.array([0, 0, 112, 112], np.float32) + 80 * i,
                             kps=template * (1 + 0.2 * i) + 80 * i, det_score=0.9)
                for i in range(n)]

    free = {n: faces(n) for n in (1, 3, 5)}
    for fs in free.values():
        backend.embed(image, fs)
    assert backend.fix_recognition_batch(4) and backend.rec_batch == 4
    assert backend.rec.session.get_inputs()[0].shape[0] == 4
    for n, want in free.items():
        got = faces(n)
        backend.embed(image, got)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-4, atol=1e-5)
