"""``discover``: new identities in a mixed folder, added to a swap-ready library.

The faces of SRC_ROOT are the cached faces whose photo (or an alias of it) lies under it.
Faces some faceset of the library already names (kept or dropped) are left out; faces
within ``near`` of an existing faceset's centroid are left to ``extend`` (counted per
faceset); the rest go through refine's stages (cluster, centroid merge, quality gates,
outlier gate, ``min_faces`` unique photos: core/refinement.refine_labels) and every
resulting cluster becomes a new faceset through ``core/newsets.add_facesets`` (export-swap's
gates and crops, numbered past the highest faceset, one recorded run, an ``added[]`` record
with the provenance). A re-run finds the faces it added named by their facesets, so it adds
nothing twice.

``discover_new`` is the whole operation for a caller outside the CLI (the Immich finalize
step): lock, finish an interrupted run, plan, add.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.library import Library, display_name, known_keys
from ..core.newsets import AddResult, NewFaceset, add_facesets, faces_under, near_facesets
from ..core.refinement import RefineParams, refine_labels
from ..core.selection import groups_by_label, select_faces, subset
from ..core.swapexport import ExportParams
from ..formats.cache import FaceCache, load_cache
from ..runtime.program import program_name

STEP = "discover"


@dataclass
class DiscoverPlan:
    root: Path
    cache_path: str
    src_root: str
    near: float
    refine: RefineParams
    faces: int = 0                         # faces under SRC_ROOT
    known: int = 0                         # named by a faceset of the library already
    to_extend: dict[str, int] = field(default_factory=dict)   # faceset -> faces near it
    clusters: list[list[str]] = field(default_factory=list)   # keys of each new identity
    unclustered: int = 0                   # left by refine's gates and --min-faces
    dropped: dict[str, int] = field(default_factory=dict)     # refine's reasons
    result: AddResult | None = None
    cache: FaceCache | None = field(default=None, repr=False)

    def lines(self) -> list[str]:
        out = ["left to extend: " + ", ".join(f"{display_name(self.root, k)} {v}" for k, v in
                                                sorted(self.to_extend.items()))
               ] if self.to_extend else []
        names = self.result.by_input if self.result else [None] * len(self.clusters)
        for k, (keys, name) in enumerate(zip(self.clusters, names)):
            out.append(f"cluster {k}: {len(keys)} faces"
                       + (f" -> {name} ({self.result.kept[name]} kept by export's gates)"
                          if name else ""))
        return out

    def line(self) -> str:
        return (f"{self.faces} faces under {self.src_root}: {self.known} in facesets already, "
                f"{sum(self.to_extend.values())} near a faceset (left to extend), "
                f"{len(self.clusters)} new identities ({sum(map(len, self.clusters))} faces), "
                f"{self.unclustered} left out by refine's gates")


def _recorded_under(cache: FaceCache, folder: Path) -> bool:
    """Whether ``cache`` recorded any file under ``folder`` (with a face or without)."""
    prefix = os.path.join(os.fspath(folder), "")
    return any(p.startswith(prefix) for p in cache.paths["path"].tolist())


def plan_discover(root: str | os.PathLike, cache_path: str | os.PathLike,
                  src_root: str | os.PathLike, near: float, refine: RefineParams,
                  cache: FaceCache | None = None) -> DiscoverPlan:
    """The new identities under ``src_root`` (nothing cropped, nothing changed)."""
    root = Path(root).resolve()
    src = Path(src_root).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder")
    cache = cache if cache is not None else load_cache(cache_path)
    sel = select_faces(cache)
    plan = DiscoverPlan(root, os.fspath(cache_path), str(src), near, refine, cache=cache)
    idx = faces_under(sel, src)
    if not len(idx) and not _recorded_under(cache, src):
        # no photo of SRC_ROOT was ever embedded: "0 faces" would read as "nothing new"
        raise ValueError(f"{src}: none of its photos is in {cache_path}; embed it first: "
                         f"`{program_name()} embed {src} {cache_path}` (the cache's model), "
                         "then run `library discover` again")
    plan.faces = len(idx)
    # faces any faceset names (listed or parked: masked, quarantined, merged...) are known
    named = known_keys(root)
    fresh = np.array([i for i in idx if str(sel.keys[i]) not in named], dtype=np.int64)
    plan.known = len(idx) - len(fresh)
    plan.to_extend, close = near_facesets(root, sel, fresh, near)
    fresh = fresh[~close]
    if len(fresh) == 0:
        return plan
    sub = subset(sel, fresh)
    res = refine_labels(cache, sub, refine)
    plan.dropped = res.dropped
    for members in groups_by_label(res.labels[res.labels >= 0]) if (res.labels >= 0).any() \
            else []:
        pos = np.flatnonzero(res.labels >= 0)[members]
        plan.clusters.append(sorted(str(k) for k in sub.keys[pos]))
    plan.unclustered = int((res.labels < 0).sum())
    return plan


def _new(plan: DiscoverPlan) -> list[NewFaceset]:
    return [NewFaceset(keys, source={"src_root": plan.src_root, "cluster": k,
                                     "faces": len(keys)})
            for k, keys in enumerate(plan.clusters)]


def apply_discover(plan: DiscoverPlan, export: ExportParams, load_detector,
                   progress: bool = True, log=print) -> dict | None:
    """Add the plan's new identities as facesets in one recorded run; its ``runs[]`` entry
    (None when there is none). Call under the folder's lock after ``runs.finish_pending``."""
    if not plan.clusters:
        return None
    prov = {"src_root": plan.src_root, "near_threshold": plan.near,
            "refine": dict(vars(plan.refine)), "faces": plan.faces, "known": plan.known,
            "left_to_extend": plan.to_extend, "unclustered": plan.unclustered,
            "refine_dropped": plan.dropped}
    plan.result = add_facesets(plan.root, plan.cache_path, _new(plan), export, load_detector,
                               STEP, prov, progress=progress, log=log, cache=plan.cache)
    return plan.result.entry


def gate_discover(plan: DiscoverPlan, export: ExportParams) -> DiscoverPlan:
    """Fill ``plan.result`` with the names and kept counts the new facesets would get."""
    if plan.clusters:
        plan.result = add_facesets(plan.root, plan.cache_path, _new(plan), export,
                                   lambda: None, STEP, dry_run=True, cache=plan.cache)
    return plan


def discover_new(root: str | os.PathLike, cache_path: str | os.PathLike,
                 src_root: str | os.PathLike, near: float, refine: RefineParams,
                 export: ExportParams, load_detector, dry_run: bool = False,
                 progress: bool = True, log=print) -> DiscoverPlan:
    """The whole ``discover`` for a library caller: under the folder's lock, finish a run
    a kill interrupted, plan, and (unless ``dry_run``) add the new identities as one
    recorded run. Returns the plan; ``plan.result.entry`` is the run (None: nothing added).
    Thresholds are cosine distances already resolved (core/thresholds.py)."""
    root = Path(root).resolve()
    if dry_run:
        return gate_discover(plan_discover(root, cache_path, src_root, near, refine), export)
    with Library(root, log, indent="").open():
        plan = plan_discover(root, cache_path, src_root, near, refine)
        apply_discover(plan, export, load_detector, progress, log)
    return plan
