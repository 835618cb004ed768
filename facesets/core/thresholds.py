"""Default distance thresholds belong to the model: one per-model table, one resolver.

Resolution order for every threshold: the command-line flag, then thresholds calibrated
for this cache (``calibrate --save`` stores them in the cache's meta under "thresholds"),
then any source a command adds (extend: the threshold the raw clustering recorded), then
this table, then thresholds estimated from the cache itself (``calibrate --estimate``, or
``run`` for a model without built-in thresholds: meta "estimate", steps/estimate.py). A model
with none of these has no safe default: the command must be given the flag, and says so.
"""
from __future__ import annotations

from ..runtime.program import program_name

# cosine distances; the values are buffalo_l's (w600k_r50 recognizer)
MODEL_THRESHOLDS: dict[str, dict[str, float]] = {
    "buffalo_l": {
        "cluster": 0.55,          # cluster --threshold
        "initial": 0.55,          # refine --initial-threshold
        "merge": 0.40,            # refine --merge-threshold (centroid level)
        "outlier": 0.55,          # refine --outlier-threshold
        "swap_outlier": 0.45,     # export-swap --swap-outlier-threshold
        "candidate_match": 0.55,  # export-swap --candidate-match-threshold
        "extend": 0.55,           # extend: join the nearest person within this
        "consolidate_group": 0.45,   # consolidate: facesets within this (similarity 0.55)
        "consolidate_merge": 0.35,   # consolidate: merged when within this (similarity 0.65)
        "dedup_near": 0.05,          # dedup-optimize: near duplicates (similarity 0.95)
        "track": 0.55,               # video track: a face continues a track within this
        "video_faceset": 0.55,       # video track --faceset: a track is that person within
        "import_loose": 0.55,        # import-folders: first outlier pass around a folder
        "import_tight": 0.45,        # import-folders: second pass, the identity's centroid
        "route": 0.45,               # import-folders --route: a mixed face joins an identity
        "discover_near": 0.45,       # discover: faces this near a faceset are left to extend
        "split": 0.45,               # split: re-cluster one faceset at this (average linkage)
        "eras_recover": 0.55,     # eras: faces of the cache this near the faceset's centroid
        "eras_tighten": 0.50,     # eras: kept within this of the re-computed centroid
        "eras_split": 0.35,       # eras: sub-clusters (average linkage)
        "eras_attach": 0.40,      # eras: a fragment joins its nearest anchor within this
    },
}

FLAGS = {
    "cluster": "--threshold", "initial": "--initial-threshold", "merge": "--merge-threshold",
    "outlier": "--outlier-threshold", "swap_outlier": "--swap-outlier-threshold",
    "candidate_match": "--candidate-match-threshold", "extend": "--threshold",
    "consolidate_group": "--group-threshold", "consolidate_merge": "--confident-threshold",
    "dedup_near": "--max-distance",
    "track": "--track-threshold", "video_faceset": "--faceset-threshold",
    "import_loose": "--loose-threshold", "import_tight": "--tight-threshold",
    "route": "--route-threshold", "discover_near": "--centroid-near",
    "split": "--split-threshold",
    "eras_recover": "--recover-threshold", "eras_tighten": "--tighten-threshold",
    "eras_split": "--subcluster-threshold", "eras_attach": "--attach-threshold",
}


# what each threshold is for, as the one message listing the missing ones says it
PURPOSE = {
    "cluster": "cluster distance", "initial": "refine stage-1 distance",
    "merge": "refine centroid merge distance", "outlier": "refine outlier gate",
    "swap_outlier": "export-swap outlier gate",
    "candidate_match": "export-swap candidate match distance",
    "extend": "extend join distance",
    "track": "video merge link distance", "video_faceset": "video merge identity distance",
}


class ThresholdError(ValueError):
    """No threshold is known for this model and none was given."""


def missing_thresholds(names, meta: dict, given: dict[str, float | None]) -> list[str]:
    """The thresholds among ``names`` that neither a flag (``given``), the cache's calibrated
    values nor the model table supply: what a whole command would fail on, found up front."""
    return [n for n in names
            if all(v is None for v, _ in _candidates(n, meta, given.get(n), ()))]


def missing_message(missing: list[str], model: str, cache: str, command: str,
                    embed: str = "") -> str:
    """One message naming every missing threshold with its flag, and how to get them
    (``embed``: the command that makes the cache, when it does not exist yet)."""
    flags = "; ".join(f"{FLAGS[n]} ({PURPOSE[n]})" for n in missing)
    first = f"`{embed}`, then " if embed else ""
    prog = program_name()
    return (f"model '{model}' has no built-in thresholds and {cache} has no calibrated ones; "
            f"`{command}` needs: {flags}. Pass them (cosine distances, e.g. 0.4-0.7), or "
            f"measure them once: {first}`{prog} calibrate {cache} TRUTH_ROOT --save` "
            "(TRUTH_ROOT: one folder of photos per person), or estimate them from the faces "
            f"alone: `{prog} calibrate --estimate {cache}`; and re-run")


def _candidates(name: str, meta: dict, given: float | None,
                extra: tuple[tuple[float | None, str], ...]):
    """(value, source) of every place a threshold can come from, in the order they win."""
    yield given, "flag"
    yield (meta.get("thresholds") or {}).get(name), "calibrated"
    yield from extra
    yield (MODEL_THRESHOLDS.get(meta.get("model", "?")) or {}).get(name), "model default"
    est = meta.get("estimate") or {}
    yield (est.get("thresholds") or {}).get(name), estimated_source(est)


def estimated_source(est: dict) -> str:
    """The source label of an estimated threshold, as commands print it."""
    return f"ESTIMATED from the cache: {est.get('how', '?')}; measure with calibrate"


def resolve_with_source(name: str, meta: dict, given: float | None,
                        *extra: tuple[float | None, str]) -> tuple[float, str]:
    """The threshold ``name`` for a cache with ``meta`` and where it came from: the flag, then
    calibrated, then each ``extra`` (value, source) a command adds, then the model table."""
    for value, source in _candidates(name, meta, given, extra):
        if value is not None:
            return float(value), source
    model = meta.get("model", "?")
    raise ThresholdError(f"model '{model}' has no default for {FLAGS.get(name, name)}: pass "
                         f"{FLAGS.get(name, name)}, or run `{program_name()} calibrate CACHE "
                         "TRUTH_ROOT --save` to store thresholds for this cache")


def resolve_threshold(name: str, meta: dict, given: float | None) -> float:
    """The threshold ``name`` for a cache with ``meta`` (flag > calibrated > model table)."""
    return resolve_with_source(name, meta, given)[0]


def threshold_source(name: str, meta: dict, given: float | None) -> str:
    """Where a resolved threshold came from: flag, calibrated or model default."""
    return next((source for value, source in _candidates(name, meta, given, ())
                 if value is not None), "model default")


# thresholds a model may lack that are derived from its calibrated cluster threshold, by
# buffalo_l's ratio to its own cluster threshold (docs/clustering.md, "Derived thresholds")
DERIVED_FROM_CLUSTER = ("consolidate_group", "consolidate_merge", "dedup_near",
                        "import_loose", "import_tight", "route", "discover_near", "split",
                        "eras_recover", "eras_tighten", "eras_split", "eras_attach",
                        "track", "video_faceset")
# eras' probe: sub-cluster sizes at these distances (buffalo_l); another model's are scaled
# by its eras_split / buffalo_l's (probe_levels)
ERAS_PROBE = (0.30, 0.35, 0.40, 0.45, 0.50)


def derived(name: str, meta: dict) -> tuple[float | None, str]:
    """(value, source) of ``name`` scaled from the cache's calibrated cluster threshold (or,
    without one and without a model default, its estimated one), or (None, "") when it is
    not derivable; an ``extra`` for ``resolve_with_source``."""
    cal = (meta.get("thresholds") or {}).get("cluster")
    source = "derived from calibrated cluster"
    if cal is None and name not in (MODEL_THRESHOLDS.get(meta.get("model", "?")) or {}):
        cal = ((meta.get("estimate") or {}).get("thresholds") or {}).get("cluster")
        source = "derived from the ESTIMATED cluster threshold"
    if name not in DERIVED_FROM_CLUSTER or cal is None:
        return None, ""
    return scaled(name, float(cal)), source


def scaled(name: str, cluster: float) -> float:
    """``name`` for a model whose cluster threshold is ``cluster``, by buffalo_l's ratio."""
    ref = MODEL_THRESHOLDS["buffalo_l"]
    return round(cluster * ref[name] / ref["cluster"], 4)



def probe_levels(split: float) -> list[float]:
    """The distances ``eras`` probes sub-cluster sizes at for a model whose eras_split is
    ``split``: buffalo_l's 0.30-0.50, scaled by split / 0.35."""
    ref = MODEL_THRESHOLDS["buffalo_l"]["eras_split"]
    return [round(level * split / ref, 4) for level in ERAS_PROBE]
