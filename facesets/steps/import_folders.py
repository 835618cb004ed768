"""``import-folders``: hand-sorted folders (one per person) become facesets of a library.

Each ROOT is a folder of person folders (a ROOT holding photos but no person folder is one
person itself); the folder name is the label. The faces of a folder are the cached faces
whose photo (or a copy of it, an alias) lies under it; ``embed`` them first. Per folder:

1. two-pass outlier rejection: the mean of all its faces, faces within ``loose`` of it kept;
   the mean of those, faces within ``tight`` of it kept: the identity (bystanders of group
   photos and strays drop out) and its centroid;
2. ``--route MIXED_ROOT``: every face under it joins the nearest identity within ``route``
   of its centroid (a group photo can feed several identities, each takes its own face);
3. the identities are added as new facesets through ``core/newsets.add_facesets``: the same
   export as export-swap, numbered past the library's highest faceset, bundles and NAME.txt
   after the label, one recorded run (``undo`` reverses it), an ``added[]`` record.

A folder imported before (an ``added[]`` record of this step names it and its faceset is
still listed) is skipped, so a re-run after a kill or a crash adds nothing twice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import runs
from ..core.newsets import AddResult, NewFaceset, add_facesets, faces_under
from ..core.selection import FaceSelection, select_faces
from ..core.swapexport import ExportParams
from ..engine import normalize_rows
from ..formats.cache import FaceCache, load_cache
from ..formats.swapset import ADDED_SECTION

STEP = "import-folders"


@dataclass
class ImportParams:
    loose: float                 # first pass (cosine distance from the folder's mean)
    tight: float                 # second pass (from the re-computed centroid)
    route: float | None = None   # --route: a mixed face joins an identity within this
    min_faces: int = 1           # a folder left with fewer faces is skipped


@dataclass
class Identity:
    label: str
    folder: str
    faces_in: int                # faces of the folder
    keys: list[str]              # kept by the two passes
    after_loose: int
    centroid: np.ndarray | None
    routed: list[str] = field(default_factory=list)
    skip: str = ""               # why it is not imported ("" = imported)


@dataclass
class ImportPlan:
    root: Path
    cache_path: str
    params: ImportParams
    identities: list[Identity]
    route_root: str | None = None
    route_faces: int = 0
    result: AddResult | None = None     # the gated facesets (a dry run) or what was added
    cache: FaceCache | None = field(default=None, repr=False)

    def lines(self) -> list[str]:
        out = []
        names = iter(self.result.by_input if self.result else [])
        for ident in self.identities:
            if ident.skip:
                out.append(f"{ident.label}: skipped ({ident.skip})")
                continue
            name = next(names, None) or "(nothing left after export's gates)"
            out.append(f"{ident.label} -> {name}: {ident.faces_in} faces in the folder, "
                       f"{ident.after_loose} after the first pass, {len(ident.keys)} after the "
                       f"second" + (f", {len(ident.routed)} routed in" if self.route_root
                                    else "")
                       + (f"; {self.result.kept.get(name, 0)} kept by export's gates"
                          if self.result else ""))
        return out

    def line(self) -> str:
        todo = [i for i in self.identities if not i.skip]
        route = (f"; {sum(len(i.routed) for i in todo)} of {self.route_faces} faces of "
                 f"{self.route_root} routed" if self.route_root else "")
        empty = sum(1 for name in (self.result.by_input if self.result else []) if not name)
        gated = (f" ({empty} left with no face by export's gates, e.g. --min-face-short: not "
                 "imported)" if empty else "")
        return (f"{len(todo) - empty} of {len(self.identities)} folders to import as new "
                f"facesets{gated}{route}")


def person_folders(root: Path) -> list[Path]:
    """The person folders of a ROOT: its sub-folders (not hidden, not ``_``-prefixed), or
    ROOT itself when it has none."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    return subs or [root]


def two_pass(emb: np.ndarray, loose: float, tight: float) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray | None]:
    """(kept after the first pass, kept after the second, centroid) of a folder's unit
    embeddings: the mean, faces within ``loose`` of it; their mean, faces within ``tight``
    of that (positions into ``emb``)."""
    if len(emb) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), None
    c1 = normalize_rows(emb.mean(axis=0, keepdims=True))[0]
    first = np.flatnonzero(1.0 - emb @ c1 <= loose)
    if len(first) == 0:
        return first, first, None
    c2 = normalize_rows(emb[first].mean(axis=0, keepdims=True))[0]
    second = np.flatnonzero(1.0 - emb @ c2 <= tight)
    if len(second) == 0:
        return first, second, None
    c3 = normalize_rows(emb[second].mean(axis=0, keepdims=True))[0]
    return first, second, c3


def imported_before(root: Path) -> dict[str, str]:
    """Folder path -> faceset name of every folder this step imported into ``root`` whose
    faceset is still listed."""
    top = runs.load_top(root)
    listed = {e["name"] for e in top.get("facesets", [])}
    out = {}
    for rec in top.get(ADDED_SECTION, []):
        if rec.get("step") != STEP:
            continue
        for fs in rec.get("facesets", []):
            folder = (fs.get("source") or {}).get("folder")
            if isinstance(folder, str) and fs.get("name") in listed:
                out[folder] = fs["name"]
    return out


def plan_import(root: str | os.PathLike, cache_path: str | os.PathLike,
                roots: list[str | os.PathLike], params: ImportParams,
                route_root: str | os.PathLike | None = None,
                cache: FaceCache | None = None) -> ImportPlan:
    """Which folders become which identities (nothing cropped, nothing changed)."""
    root = Path(root).resolve()
    cache = cache if cache is not None else load_cache(cache_path)
    sel = select_faces(cache)
    done = imported_before(root) if root.is_dir() and any(root.iterdir()) else {}
    idents: list[Identity] = []
    for r in roots:
        for folder in person_folders(Path(r).resolve()):
            idents.append(_identity(sel, folder, params, done))
    plan = ImportPlan(root, os.fspath(cache_path), params, idents,
                      os.fspath(Path(route_root).resolve()) if route_root else None,
                      cache=cache)
    if route_root:
        _route(sel, plan, Path(route_root).resolve())
    return plan


def _identity(sel: FaceSelection, folder: Path, p: ImportParams,
              done: dict[str, str]) -> Identity:
    idx = faces_under(sel, folder)
    first, second, centroid = two_pass(sel.embeddings[idx], p.loose, p.tight)
    ident = Identity(folder.name, str(folder), len(idx), [str(k) for k in sel.keys[idx[second]]],
                     len(first), centroid)
    if str(folder) in done:
        ident.skip = f"imported before as {done[str(folder)]}"
    elif len(idx) == 0:
        ident.skip = "no cached face under it: embed it first"
    elif len(ident.keys) < p.min_faces:
        ident.skip = (f"{len(ident.keys)} faces left after the two passes, fewer than "
                      f"{p.min_faces}")
    return ident


def _route(sel: FaceSelection, plan: ImportPlan, mixed: Path) -> None:
    """Each face under ``mixed`` joins the nearest identity within the route threshold."""
    live = [i for i in plan.identities if not i.skip and i.centroid is not None]
    idx = faces_under(sel, mixed)
    plan.route_faces = len(idx)
    if not live or len(idx) == 0:
        return
    cents = np.stack([i.centroid for i in live])
    dist = 1.0 - sel.embeddings[idx] @ cents.T
    near = dist.argmin(axis=1)
    for n, (i, k) in enumerate(zip(idx, near)):
        if dist[n, k] <= plan.params.route:
            key = str(sel.keys[i])
            if key not in live[k].keys:
                live[k].routed.append(key)


def _new_facesets(plan: ImportPlan) -> list[NewFaceset]:
    return [NewFaceset(i.keys + i.routed, label=i.label,
                       source={"folder": i.folder, "faces_in_folder": i.faces_in,
                               "after_first_pass": i.after_loose,
                               "after_second_pass": len(i.keys), "routed": len(i.routed),
                               "route_root": plan.route_root})
            for i in plan.identities if not i.skip]


def _provenance(plan: ImportPlan) -> dict:
    p = plan.params
    return {"roots_folders": [i.folder for i in plan.identities],
            "thresholds": {"loose": p.loose, "tight": p.tight, "route": p.route},
            "route_root": plan.route_root, "route_faces": plan.route_faces,
            "skipped": {i.label: i.skip for i in plan.identities if i.skip}}


def gate_import(plan: ImportPlan, export: ExportParams) -> ImportPlan:
    """Fill ``plan.result`` with what export's gates keep and the names the new facesets
    will get (a dry run of ``add_facesets``)."""
    plan.result = add_facesets(plan.root, plan.cache_path, _new_facesets(plan), export,
                               lambda: None, STEP, dry_run=True, cache=plan.cache)
    return plan


def apply_import(plan: ImportPlan, export: ExportParams, load_detector, progress: bool = True,
                 log=print) -> dict | None:
    """Add the plan's identities as new facesets in one recorded run; its ``runs[]``
    entry (None when there is nothing to import). Call under the folder's lock, after
    ``runs.finish_pending``."""
    new = _new_facesets(plan)
    if not new:
        return None
    plan.result = add_facesets(plan.root, plan.cache_path, new, export, load_detector, STEP,
                               _provenance(plan), progress=progress, log=log,
                               cache=plan.cache)
    return plan.result.entry
