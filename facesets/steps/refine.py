"""``refine``: from raw clusters to clean facesets (one identity each, enough photos).

Stages, each a plain function over label arrays (no N x N matrix outside the engine):
  1. cluster at ``initial`` threshold (the engine, cannot-link honoured)
  2. merge over-split clusters whose centroids are within ``merge`` (the engine again, on
     centroids; two clusters holding faces of one photo never merge)
  3. quality gate: face_short, blur, det_score
  4. outlier rejection: in clusters of 4+ faces, drop faces farther than ``outlier`` from
     the centroid
  5. size filter: at least ``min_faces`` unique source images
and the survivors become OUT/faceset_NNN/ (numbered by size) + refine_manifest.json.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.refinement import RefineParams, RefineResult, refine_labels
from ..core.selection import FaceSelection, entry_for, groups_by_label, select_faces
from ..formats.cache import FaceCache
from ..formats.manifest import (REFINE_MANIFEST, REFINE_MANIFEST_FILE, dropped_entry,
                                faceset_entry,
                                is_face_sets_output, new_manifest, refine_manifest, start_output,
                                write_manifest)
from ..formats.report import write_report
from ..io.fsutil import replace_dir
from ..io.materialize import place_all
from ..runtime.progress import progress_bar


def write_refine_output(cache: FaceCache, sel: FaceSelection, res: RefineResult, out: Path,
                        link: str, manifest: dict) -> dict:
    out = Path(out)
    stage = start_output(out)
    facesets = []
    valid = res.labels >= 0
    idx = np.flatnonzero(valid)
    groups = groups_by_label(res.labels[valid]) if valid.any() else []
    gated = res.gated_by_faceset()
    for members in progress_bar(groups, desc="placing photos", unit="faceset", disable=None):
        name = f"faceset_{len(facesets):03d}"
        entries = []
        for i in idx[members]:
            placed, _ = place_all(sel.locations[sel.sha256[i]], stage / name, link)
            entries.append(entry_for(cache, sel, i, placed))
        # what refine's gates took out of this identity (not placed: listed, with why)
        dropped = [dropped_entry(entry_for(cache, sel, g.index), g.gate, g.value, g.limit)
                   for g in gated.get(len(facesets), [])]
        for e in dropped:
            e.pop("files", None)
        facesets.append(faceset_entry(name, entries, dropped))
    manifest = refine_manifest(manifest, facesets, int(len(sel)), int(valid.sum()),
                               res.dropped, res.timing)
    write_manifest(stage / REFINE_MANIFEST_FILE, manifest)
    replace_dir(stage, out, is_ours=is_face_sets_output)
    write_report(out)
    return manifest


def run_refine(cache: FaceCache, cache_path: str, out: Path, params: RefineParams,
               link: str = "copy") -> dict:
    sel = select_faces(cache)
    res = refine_labels(cache, sel, params)
    manifest = new_manifest(REFINE_MANIFEST, cache_path, cache.meta,
                            dict(vars(params), link=link))
    return write_refine_output(cache, sel, res, out, link, manifest)
