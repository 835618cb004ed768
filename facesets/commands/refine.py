"""refine CACHE OUT: clean facesets (merge, quality gate, outliers, size filter)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.library import heavy_loss
from ..core.refinement import GATE_FLAGS, RefineParams, refine_labels
from ..core.selection import groups_by_label, select_faces
from ..formats.cache import load_cache
from ..formats.manifest import REFINE_MANIFEST_FILE
from ..io.fsutil import output_lock
from ..runtime.pipeline import RunLayout, Step, cache_inputs, option_values
from ..steps.calibrate import truth_report
from ..steps.refine import run_refine
from .common import CACHE_HELP, add_engine_option, add_link_option, say
from .options import add_refine_options, refine_params


def register(sub) -> None:
    p = sub.add_parser("refine", description=__doc__)
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("out", help="output folder (replaced whole if made by face-sets)")
    add_refine_options(p)
    add_engine_option(p)
    add_link_option(p)
    p.add_argument("--truth", metavar="TRUTH_ROOT", default=None,
                   help="also score the facesets against hand-sorted person folders")
    p.set_defaults(func=run)


# the quality gates: drop reason -> (flag, RefineParams field, cache column, unit)
QUALITY_GATES = {"small": ("--min-short", "min_short", "face_short", "px"),
                 "blurry": ("--min-blur", "min_blur", "blur", ""),
                 "low_det_score": ("--min-det-score", "min_det_score", "det_score", "")}
# "the gates removed almost everything": fewer kept than this share of the faces
ALMOST_ALL = 0.2
# a suggested quality gate keeps this share of the faces
KEEP_SHARE = 0.8


def gate_hints(cache, params: RefineParams, summary: dict) -> list[str]:
    """When the gates removed almost every face: per gate that dropped many, the value that
    would keep most faces (quality gates: the value KEEP_SHARE of the faces pass; the size
    filter: the photo counts of the largest groups the other gates left)."""
    if not summary["faces_in"] or summary["faces_kept"] >= ALMOST_ALL * summary["faces_in"]:
        return []
    sel = select_faces(cache)
    dropped = summary["dropped"]
    hints = []
    for reason, n in sorted(dropped.items(), key=lambda kv: -kv[1]):
        if not n:
            continue
        if reason in QUALITY_GATES:
            flag, field, col, unit = QUALITY_GATES[reason]
            values = np.asarray(cache.faces[col][sel.rows], dtype=np.float64)
            now = getattr(params, field)
            value = float(np.quantile(values, 1 - KEEP_SHARE))
            shown = f"{value:.2f}" if col == "det_score" else f"{int(value)}"
            hints.append(f"{flag} {shown} would pass {KEEP_SHARE:.0%} of the faces (now {now:g}; "
                         f"median {np.median(values):.{2 if col == 'det_score' else 0}f}"
                         f"{' ' + unit if unit else ''})")
        elif reason == "too_few_images":
            res = refine_labels(cache, sel, replace(params, min_faces=1))
            sizes = sorted((len(set(sel.sha256[g].tolist()))
                            for g in groups_by_label(res.labels[res.labels >= 0])),
                           reverse=True) if (res.labels >= 0).any() else []
            if sizes:
                keep = max(1, min(params.min_faces - 1, sizes[min(2, len(sizes) - 1)]))
                kept = sum(1 for k in sizes if k >= keep)
                hints.append(f"--min-faces {keep} would keep {kept} faceset"
                             f"{'s' if kept != 1 else ''} (now {params.min_faces}; the "
                             f"largest groups have {', '.join(map(str, sizes[:5]))} photos)")
        elif reason == "outlier":
            hints.append(f"--outlier-threshold above {params.outlier_threshold:g} keeps more "
                         "faces far from their faceset's centroid")
    if hints:
        hints.insert(0, f"the gates kept {summary['faces_kept']} of {summary['faces_in']} "
                        "faces; to keep more:")
    return hints


def refine_lines(cache, params: RefineParams, m: dict, out) -> list[str]:
    """refine's summary (with every drop reason) and, when the gates removed almost
    everything, which gate and what value would keep the faces."""
    s = m["summary"]
    dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items() if v) or "none"
    lines = [f"refine: {s['faces_in']} faces -> {s['facesets']} facesets with "
             f"{s['faces_kept']} faces; dropped: {dropped}; {out}"]
    for fs in m["facesets"]:
        gone = fs.get("dropped", [])
        line = heavy_loss("refine", fs["name"], len(fs["faces"]) + len(gone), gone, GATE_FLAGS)
        if line:
            lines.append(f"{line} (listed in {Path(out) / REFINE_MANIFEST_FILE})")
    return lines + [f"refine: {h}" if i == 0 else f"  {h}"
                    for i, h in enumerate(gate_hints(cache, params, s))]


def run(args) -> int:
    cache = load_cache(args.cache)
    params = refine_params(args, cache.meta, args.cache)
    with output_lock(args.out):
        m = run_refine(cache, args.cache, Path(args.out), params, args.link)
    for line in refine_lines(cache, params, m, args.out):
        say(line)
    if args.truth:  # scored over the faces the facesets kept
        groups = [[f["key"] for f in fs["faces"]] for fs in m["facesets"]]
        for line in truth_report(cache, args.truth, groups):
            say(line)
    return 0


def pipeline_step(args, layout: RunLayout) -> Step:
    """refine as a step of `run`: OUT/facesets from the cache."""
    def action() -> dict:
        cache = load_cache(str(layout.cache))
        params = refine_params(args, cache.meta, str(layout.cache))
        m = run_refine(cache, str(layout.cache), layout.facesets, params, args.link)
        for line in refine_lines(cache, params, m, layout.facesets):
            say(line)
        return {k: v for k, v in m["summary"].items() if k != "dropped"}

    options = option_values(args, "initial_threshold", "merge_threshold", "outlier_threshold",
                            "min_short", "min_blur", "min_det_score", "min_faces", "engine",
                            "link")
    return Step("refine", cache_inputs(layout, False, options), layout.refine_manifest, action)
