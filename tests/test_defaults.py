"""Pure checks of the single sources of defaults: the threshold resolver's order (with
extend's extra source), the backend registry, and command defaults read from the steps."""
from __future__ import annotations

import pytest

from facesets.backends import BACKENDS, BackendError, backend_class, default_model
from facesets.cli import build_parser
from facesets.core.refinement import RefineParams
from facesets.core.thresholds import (ThresholdError, resolve_threshold, resolve_with_source,
                                      threshold_source)
from facesets.steps.export import ExportParams

META = {"model": "buffalo_l"}
RECORDED = (0.61, "raw manifest")


def test_threshold_order_flag_calibrated_extra_model():
    calibrated = dict(META, thresholds={"extend": 0.5})
    assert resolve_with_source("extend", calibrated, 0.3, RECORDED) == (0.3, "flag")
    assert resolve_with_source("extend", calibrated, None, RECORDED) == (0.5, "calibrated")
    assert resolve_with_source("extend", META, None, RECORDED) == (0.61, "raw manifest")
    assert resolve_with_source("extend", META, None, (None, "raw manifest")) == \
        (0.55, "model default")
    assert resolve_threshold("cluster", META, None) == 0.55
    assert threshold_source("cluster", META, None) == "model default"
    with pytest.raises(ThresholdError, match="--threshold"):
        resolve_threshold("cluster", {"model": "testpack_s"}, None)


def test_backend_registry():
    assert "insightface" in BACKENDS
    assert backend_class().DEFAULT_MODEL == default_model() == "buffalo_l"
    with pytest.raises(BackendError, match="unknown face backend"):
        backend_class("nope")


def test_command_defaults_come_from_params():
    sub = build_parser()._subparsers._group_actions[0].choices
    from facesets.commands.options import fill_gate_defaults

    # a gate not given is None (the library's setting is resolved later); without a library
    # it is the step's default, read from its Params
    refine = sub["refine"].parse_args(["c", "o"])
    assert refine.min_short is None
    fill_gate_defaults(refine)
    for name in ("min_short", "min_blur", "min_det_score", "min_faces", "engine"):
        assert getattr(refine, name) == getattr(RefineParams(0, 0, 0), name)
    export = sub["export-swap"].parse_args(["c", "m", "o"])
    assert export.min_face_short is None
    fill_gate_defaults(export)
    for name in ("min_face_short", "out_size", "pad_ratio", "top_n", "candidate_min_score"):
        assert getattr(export, name) == getattr(ExportParams(0), name)
