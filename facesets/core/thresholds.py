"""Default distance thresholds belong to the model: one per-model table, one resolver.

Resolution order for every threshold: the command-line flag, then thresholds calibrated
for this cache (``calibrate --save`` stores them in the cache's meta under "thresholds"),
then this table. A model with neither has no safe default: the command must be given the
flag, and says so.
"""
from __future__ import annotations

# cosine distances; the values are buffalo_l's (w600k_r50 recognizer)
MODEL_THRESHOLDS: dict[str, dict[str, float]] = {
    "buffalo_l": {
        "cluster": 0.55,          # cluster --threshold
        "initial": 0.55,          # refine --initial-threshold
        "merge": 0.40,            # refine --merge-threshold (centroid level)
        "outlier": 0.55,          # refine --outlier-threshold
        "swap_outlier": 0.45,     # export-swap --outlier-threshold
        "candidate_match": 0.55,  # export-swap --candidate-match-threshold
        "extend": 0.55,           # extend: join the nearest person within this
    },
}

FLAGS = {
    "cluster": "--threshold", "initial": "--initial-threshold", "merge": "--merge-threshold",
    "outlier": "--outlier-threshold", "swap_outlier": "--outlier-threshold",
    "candidate_match": "--candidate-match-threshold", "extend": "--threshold",
}


class ThresholdError(ValueError):
    """No threshold is known for this model and none was given."""


def resolve_threshold(name: str, meta: dict, given: float | None) -> float:
    """The threshold ``name`` for a cache with ``meta`` (flag > calibrated > model table)."""
    if given is not None:
        return float(given)
    calibrated = (meta.get("thresholds") or {}).get(name)
    if calibrated is not None:
        return float(calibrated)
    model = meta.get("model", "?")
    table = MODEL_THRESHOLDS.get(model)
    if table and name in table:
        return table[name]
    raise ThresholdError(f"model '{model}' has no default for {FLAGS.get(name, name)}: pass "
                         f"{FLAGS.get(name, name)}, or run `sort_faces.py calibrate CACHE "
                         "TRUTH_ROOT --save` to store thresholds for this cache")


def threshold_source(name: str, meta: dict, given: float | None) -> str:
    """Where a resolved threshold came from: flag, calibrated or model default."""
    if given is not None:
        return "flag"
    if (meta.get("thresholds") or {}).get(name) is not None:
        return "calibrated"
    return "model default"
