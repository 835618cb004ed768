"""``grow``: the faces of a cache that a swap-ready library does not know yet, added to it.

New faces are the cached faces no faceset of the library names, kept or dropped, listed or
quarantined or masked (core/library.known_keys): faces curated out by hand never come
back, and faces an earlier grow placed nowhere are considered again (a person with one
photo last month and five now becomes an identity), as are the faces of an undone run
(an undo is as if the run never happened: growing again after undoing a grow makes it
again). Then, as one recorded run (undo reverses the whole grow):

1. each new face joins the existing faceset it is nearest to by extend's rule
   (core/joining.join_nearest: average cosine distance to its faces within the cluster
   threshold, within the swap outlier threshold of its centroid, no face of the same photo
   there), repeated until no more join (a joined face moves the faceset's mean); whatever
   made the faceset (export, import-folders, discover, split, eras, consolidate, review);
   the joined faces go through export-swap's per-face gates (small, occluded, same photo,
   near duplicate of a kept face) and its crop; kept ones are added (re-ranked, bundles
   rebuilt), refused ones go to the faceset's ``dropped[]`` with reason, value and limit;
2. the rest, except those within discover's ``near`` distance of a faceset's centroid
   (they would duplicate an identity: left, counted), go through refine's stages
   (core/refinement.refine_labels) and every resulting cluster becomes a new faceset
   (core/newsets.add_facesets: export's gates and crops, numbered past the highest, an
   ``added[]`` record).

No faceset is renumbered or renamed: NAME.txt, labels and bundle names stay. A kill at any
point leaves either the library as it was (builds are reused or thrown away) or a recorded
run the next command finishes; a grow with nothing new changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import runs
from ..core.joining import (Joining, build_joined, gate_joining, join_nearest,
                            joined_changes)
from ..core.library import Faceset, Library, known_keys
from ..core.newsets import AddResult, NewFaceset, add_facesets, near_facesets
from ..core.refinement import RefineParams, quality_mask, refine_labels
from ..core.selection import FaceSelection, groups_by_label, select_faces, subset
from ..core.swapexport import ExportParams
from ..formats.cache import FaceCache, load_cache
from ..formats.runs import RUNS_SECTION

STEP = "grow"


@dataclass
class GrowParams:
    join_threshold: float      # extend's average-linkage distance (the cluster threshold)
    near: float                # discover's: a leftover this near a faceset is not new
    refine: RefineParams       # the new identities' stages and gates
    export: ExportParams       # export-swap's gates and crop (its outlier threshold too)


@dataclass
class GrowPlan:
    root: Path
    cache_path: str
    params: GrowParams
    faces: int = 0                               # faces in the cache
    known: int = 0                               # named by the library already
    joins: list[Joining] = field(default_factory=list)
    near: dict[str, int] = field(default_factory=dict)     # faceset -> leftovers near it
    clusters: list[list[str]] = field(default_factory=list)
    unclustered: int = 0                         # left by refine's gates and --min-faces
    poor: int = 0                                # below refine's quality gates: left
    refine_dropped: dict[str, int] = field(default_factory=dict)
    result: AddResult | None = None
    cache: FaceCache | None = field(default=None, repr=False)
    sel: FaceSelection | None = field(default=None, repr=False)

    @property
    def new(self) -> int:
        return self.faces - self.known

    def joined(self) -> int:
        return sum(len(j.keep) for j in self.joins)

    def gated(self) -> int:
        return sum(len(j.dropped) for j in self.joins)

    def changes(self) -> bool:
        return bool(self.joins or self.clusters)

    def lines(self) -> list[str]:
        out = []
        for j in self.joins:
            reasons: dict[str, int] = {}
            for d in j.dropped:
                reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
            out.append(f"{j.name}: +{len(j.keep)} faces joined"
                       + (f", {len(j.dropped)} dropped by export's gates ("
                          + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")"
                          if j.dropped else ""))
        if self.near:
            out.append("left near a faceset (it would duplicate an identity): "
                       + ", ".join(f"{k} {v}" for k, v in sorted(self.near.items())))
        names = self.result.by_input if self.result else [None] * len(self.clusters)
        for k, (keys, name) in enumerate(zip(self.clusters, names)):
            out.append(f"new identity {k}: {len(keys)} faces"
                       + (f" -> {name} ({self.result.kept[name]} kept by export's gates)"
                          if name else ""))
        return out

    def line(self) -> str:
        if not self.changes():
            return (f"nothing new: {self.faces} cached faces, {self.known} in the library, "
                    f"{self.new} left out (below refine's quality gates {self.poor}, near a "
                    f"faceset {sum(self.near.values())}, refine's other gates or too few "
                    f"photos {self.unclustered})")
        made = f": {', '.join(self.result.names)}" if self.result and self.result.names \
            else ""
        return (f"{self.new} new faces of {self.faces}: {self.joined()} joined "
                f"{sum(1 for j in self.joins if j.keep)} facesets ({self.gated()} dropped by "
                f"export's gates), {len(self.clusters)} new identities "
                f"({sum(map(len, self.clusters))} faces){made}, {sum(self.near.values())} near a "
                f"faceset left, {self.poor + self.unclustered} left out by refine's gates "
                "(considered again next time)")


def _members(root: Path, names: list[str], index_of: dict[str, int]) -> list[list[int]]:
    out = []
    for n in names:
        body = Faceset.load(root / n).body
        out.append([index_of[f["key"]] for f in body["faces"] if f["key"] in index_of])
    return out


def plan_grow(root: str | os.PathLike, cache_path: str | os.PathLike, p: GrowParams,
              cache: FaceCache | None = None) -> GrowPlan:
    """What a grow would do (nothing cropped, nothing changed); joins gated already."""
    root = Path(root).resolve()
    cache = cache if cache is not None else load_cache(cache_path)
    sel = select_faces(cache)
    plan = GrowPlan(root, os.fspath(cache_path), p, faces=len(sel), cache=cache, sel=sel)
    known = known_keys(root)
    keys = sel.keys.tolist()
    pending = np.array([i for i, k in enumerate(keys) if k not in known], dtype=np.int64)
    plan.known = len(sel) - len(pending)
    # refine's quality gates first, as extend's: a face refine would drop joins nothing
    # (it stays new: a later grow with other gates may take it)
    poor = np.zeros(len(pending), dtype=bool)
    for mask in quality_mask(cache, subset(sel, pending), p.refine).values():
        poor |= mask
    plan.poor = int(poor.sum())
    pending = pending[~poor]
    names = [e["name"] for e in runs.load_top(root).get("facesets", [])]
    groups = _members(root, names, {k: i for i, k in enumerate(keys)})
    joined: list[list[int]] = [[] for _ in names]
    while len(pending) and names:     # a face that joined moves its faceset's mean
        to = join_nearest(sel, pending, [g + j for g, j in zip(groups, joined)],
                          p.join_threshold, p.export.outlier_threshold)
        if not (to >= 0).any():
            break
        for k in np.flatnonzero(to >= 0):
            joined[int(to[k])].append(int(pending[k]))
        pending = pending[to < 0]
    plan.joins = [gate_joining(cache, sel, n, g, sorted(j), p.export)
                  for n, g, j in zip(names, groups, joined) if j]
    plan.near, close = near_facesets(root, sel, pending, p.near)
    pending = pending[~close]
    if len(pending):
        sub = subset(sel, pending)
        res = refine_labels(cache, sub, p.refine)
        plan.refine_dropped = res.dropped
        valid = np.flatnonzero(res.labels >= 0)
        for members in groups_by_label(res.labels[valid]) if len(valid) else []:
            plan.clusters.append(sorted(str(k) for k in sub.keys[valid[members]]))
        plan.unclustered = int((res.labels < 0).sum())
    return plan


def _new(plan: GrowPlan) -> list[NewFaceset]:
    return [NewFaceset(keys, source={"grow": k, "faces": len(keys)})
            for k, keys in enumerate(plan.clusters)]


def gate_grow(plan: GrowPlan) -> GrowPlan:
    """Fill ``plan.result`` with the names and kept counts the new facesets would get."""
    if plan.clusters:
        plan.result = add_facesets(plan.root, plan.cache_path, _new(plan), plan.params.export,
                                   lambda: None, STEP, dry_run=True, cache=plan.cache)
    return plan


def _join_tag(plan: GrowPlan) -> str:
    """The joined crops' build folder: a digest of the plan and of the library's run count
    (a re-run after a kill reuses the build; a grow after an undo builds anew)."""
    content = {"root": str(plan.root), "runs": len(runs.load_top(plan.root).get(RUNS_SECTION,
                                                                                  [])),
               "params": vars(plan.params.export),
               "faces": sorted((j.name, pl.key) for j in plan.joins for pl in j.keep)}
    return f"{STEP}-" + hashlib.sha256(json.dumps(content, sort_keys=True, default=str,
                                                  allow_nan=False)
                                       .encode()).hexdigest()[:12]


def apply_grow(plan: GrowPlan, load_detector, progress: bool = True, log=print) -> dict | None:
    """Carry out the plan as one recorded run; its ``runs[]`` entry (None: nothing to do).
    Call under the folder's lock after ``runs.finish_pending``."""
    if not plan.changes():
        return None
    p = plan.params
    changes = None
    if plan.joins:
        built = build_joined(plan.root, _join_tag(plan), plan.cache, plan.cache_path,
                             plan.sel, plan.joins, p.export, load_detector, STEP, progress)
        changes, _ = joined_changes(plan.root, built, plan.joins, plan.sel, STEP)
        changes.summary = {"joined": plan.joined(), "gated": plan.gated()}
    prov = {"join_threshold": p.join_threshold, "near_threshold": p.near,
            "refine": dict(vars(p.refine)), "new_faces": plan.new,
            "joined": {j.name: len(j.keep) for j in plan.joins},
            "left_near": plan.near, "unclustered": plan.unclustered, "poor": plan.poor,
            "refine_dropped": plan.refine_dropped}
    plan.result = add_facesets(plan.root, plan.cache_path, _new(plan), p.export,
                               load_detector, STEP, prov, progress=progress, log=log,
                               cache=plan.cache, changes=changes)
    return plan.result.entry


def grow_library(root: str | os.PathLike, cache_path: str | os.PathLike, p: GrowParams,
                 load_detector, dry_run: bool = False, progress: bool = True, log=print,
                 lock: bool = True, cache: FaceCache | None = None,
                 settings: dict[str, float] | None = None) -> GrowPlan:
    """The whole grow for a library caller (`run`, `immich finalize`): under the folder's
    lock (``lock``: False when the caller holds it), finish a run a kill interrupted, plan,
    and (unless ``dry_run``) apply; ``settings``: what the caller's flags chose, recorded in
    the library by the run (Library.record). Returns the plan (``plan.result.entry``: the
    run)."""
    root = Path(root).resolve()
    if dry_run:
        return gate_grow(plan_grow(root, cache_path, p, cache))
    library = Library(root, log, indent="")
    with library.open(lock=lock):
        plan = plan_grow(root, cache_path, p, cache)
        with library.record(settings):
            apply_grow(plan, load_detector, progress, log)
    return plan

