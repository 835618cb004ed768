"""``consolidate``: find facesets of a swap-ready folder that are one person and merge them.

Grouping is complete linkage over the facesets' centroids (cosine distance), cut at the
group threshold: every pair in a group is within it, so a chain of look-alikes never puts
two strangers together. A group whose farthest pair is within the merge threshold is a
confident merge; the others are printed for review and left alone.

A merge keeps the faceset with the most faces (the lowest name on a tie) as the survivor:
the others' face PNGs are renamed into its faces/ (numbered past its highest), all its faces
re-ranked by score, its centroid the face-weighted mean, its bundles rebuilt; each merged-away
faceset folder moves to ``_merged/`` with an empty ``faces[]`` and ``merged_into`` (its
dropped/ PNGs and its old bundles, a self-contained snapshot, stay with it). The top-level
manifest loses their listings and gains a ``merged[]`` record. It is one recorded run
(core/runs.py): undoable, finished by the next command after a kill.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import runs
from ..core.library import Faceset, display_names
from ..formats.manifest import (FACESET_NAME, SWAP_FACESET_MANIFEST, ManifestError, centroid_of,
                                load_manifest, safe_member_path)
from ..formats.eras import ERA_NAME
from ..formats.runs import MERGED_DIR, MERGED_SECTION, merged_record
from ..formats.swapset import (FACES_DIR, HAND_REMOVED_REASON, MANIFEST_NAME, faceset_listing,
                               next_face_number)

STEP = "consolidate"


@dataclass
class Group:
    members: list[str]            # survivor first
    min_similarity: float         # the farthest pair
    similarity: dict[str, float]  # each other member's similarity to the survivor
    confident: bool


@dataclass
class ConsolidatePlan:
    root: Path
    group_threshold: float        # cosine distance
    merge_threshold: float
    facesets: int = 0
    groups: list[Group] = field(default_factory=list)
    shown: dict[str, str] = field(default_factory=dict)   # name -> "faceset_017 (Anna)"

    def merges(self) -> list[Group]:
        return [g for g in self.groups if g.confident]

    def lines(self) -> list[str]:
        out = []
        for g in self.groups:
            what = "merge into" if g.confident else "review (not merged):"
            others = ", ".join(f"{self.show(n)} ({g.similarity[n]:.3f})"
                               for n in g.members[1:])
            out.append(f"{what} {self.show(g.members[0])}: {others}; lowest pairwise "
                       f"similarity {g.min_similarity:.3f}")
        return out

    def show(self, name: str) -> str:
        return self.shown.get(name, name)

    def line(self) -> str:
        return (f"{self.facesets} facesets, {len(self.groups)} groups at similarity >= "
                f"{1 - self.group_threshold:.2f}, {len(self.merges())} confident (>= "
                f"{1 - self.merge_threshold:.2f}) merging "
                f"{sum(len(g.members) - 1 for g in self.merges())} facesets")


def complete_linkage_groups(centroids: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups (of 2 or more, by index) whose every pair is within cosine distance
    ``threshold``: scipy's complete linkage cut at ``threshold``."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    if len(centroids) < 2:
        return []
    dist = np.clip(pdist(centroids, "cosine"), 0.0, 2.0)
    labels = fcluster(linkage(dist, "complete"), t=threshold, criterion="distance")
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def plan_consolidate(root: str | Path, group_threshold: float,
                     merge_threshold: float) -> ConsolidatePlan:
    root = Path(root).resolve()
    top = runs.load_top(root)
    names, cents, sizes = [], [], {}
    for entry in top.get("facesets", []):
        name = entry["name"]
        if ERA_NAME.fullmatch(name):   # an era `eras` split off on purpose: never merged back
            continue
        m = load_manifest(root / name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        cents.append(centroid_of(m, root / name / MANIFEST_NAME,
                                 len(cents[0]) if cents else None))
        names.append(name)
        sizes[name] = len(m["faces"])
    plan = ConsolidatePlan(root, group_threshold, merge_threshold, facesets=len(names))
    if len(names) < 2:
        return plan
    c = np.stack(cents)
    sim = c @ c.T
    for idx in complete_linkage_groups(c, group_threshold):
        members = sorted((names[i] for i in idx), key=lambda n: (-sizes[n], n))
        pos = {n: names.index(n) for n in members}
        lowest = min(float(sim[pos[a], pos[b]]) for a in members for b in members if a < b)
        plan.groups.append(Group(
            members, lowest, {n: float(sim[pos[members[0]], pos[n]]) for n in members[1:]},
            confident=lowest >= 1 - merge_threshold))
    plan.shown = display_names(root, [n for g in plan.groups for n in g.members])
    return plan


def plan_merge(root: str | Path, names: list[str]) -> ConsolidatePlan:
    """A plan that merges exactly the facesets ``names`` (an explicit group, e.g. picked on
    the review page) as consolidate merges a confident group: the one with the most faces
    survives. Carry it out with ``apply_consolidate``."""
    root = Path(root).resolve()
    names = list(dict.fromkeys(names))
    if len(names) < 2:
        raise ValueError("a merge needs two facesets or more")
    listed = {e["name"] for e in runs.load_top(root).get("facesets", [])}
    cents, sizes = {}, {}
    for name in names:
        if not isinstance(name, str) or not FACESET_NAME.fullmatch(name) or name not in listed:
            raise ValueError(f"{root / MANIFEST_NAME}: no faceset {name!r} to merge")
        m = load_manifest(root / name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        cents[name] = np.asarray(centroid_of(m, root / name / MANIFEST_NAME, None), np.float64)
        sizes[name] = len(m["faces"])
    members = sorted(names, key=lambda n: (-sizes[n], n))
    sim = {(a, b): float(cents[a] @ cents[b]) for a in members for b in members}
    lowest = min(sim[a, b] for a in members for b in members if a < b)
    plan = ConsolidatePlan(root, float("nan"), float("nan"), facesets=len(listed))
    plan.groups.append(Group(members, lowest, {n: sim[members[0], n] for n in members[1:]},
                             confident=True))
    plan.shown = display_names(root, members)
    return plan



_next_number = next_face_number


def _merge_group(root: Path, g: Group, run_ph: str, moves, after, changed,
                 rebuild, width: int = 3) -> dict:
    """Add one group's moves and new manifests to the run; its ``merged[]`` entries."""
    surv = g.members[0]
    sdir = root / surv
    survivor = Faceset.load(sdir)
    sm = survivor.body
    nxt = _next_number(sm, sdir)
    weights = [(np.asarray(sm["centroid"], np.float64), len(sm["faces"]))]
    merged, arriving = [], []
    for name in g.members[1:]:
        if not FACESET_NAME.fullmatch(name):
            raise ManifestError(f"{root / MANIFEST_NAME}: {name!r} is not a faceset name")
        mdir = root / name
        member = Faceset.load(mdir)
        weights.append((np.asarray(member.body["centroid"], np.float64), len(member.faces)))
        renamed, missing = {}, []
        for face in member.faces:
            if not (mdir / face["file"]).is_file():
                missing.append(dict(face, reason=HAND_REMOVED_REASON))   # gone by hand
                continue
            dest = f"{FACES_DIR}/{nxt:0{width}d}.png"
            nxt += 1
            moves.append((f"{name}/{face['file']}", f"{surv}/{dest}"))
            renamed[face["file"]] = dest
            arriving.append(dict(face, file=dest, merged_from=name))
        folder = safe_member_path(root, runs.free_name(root, f"{MERGED_DIR}/{name}"),
                                  "merged")
        folder_rel = folder.relative_to(root).as_posix()
        moves.append((name, folder_rel))
        gone = member.emptied("merged_into", {"faceset": surv, "run": run_ph,
                                              "files": renamed}, missing)
        after[f"{folder_rel}/{MANIFEST_NAME}"] = member.noted(gone, STEP, merged_into=surv,
                                                              moved=len(renamed))
        changed.append(f"{name}/{MANIFEST_NAME}")
        merged.append({"name": name, "moved_to": folder_rel, "faces": len(renamed),
                       "similarity": round(g.similarity[name], 4)})
    total = sum(w for _, w in weights) or 1
    cen = sum(c * w for c, w in weights) / total
    new = survivor.adding(arriving, centroid=cen / (np.linalg.norm(cen) or 1.0),
                          faces_in=sum(m["faces"] for m in merged))
    survivor.noted(new, STEP, merged=[m["name"] for m in merged],
                   added=sum(m["faces"] for m in merged), kept=len(new["faces"]))
    after[f"{surv}/{MANIFEST_NAME}"] = new
    changed += runs.faceset_files(root, surv)
    rebuild.append(surv)
    return merged_record(run_ph, surv, merged, g.min_similarity)


def apply_consolidate(plan: ConsolidatePlan, log=print) -> dict | None:
    """Merge the plan's confident groups as one recorded run; its ``runs[]`` entry (None
    when there is nothing to merge). Call under the folder's lock, after
    ``runs.finish_pending``."""
    root = plan.root
    merges = plan.merges()
    if not merges:
        return None
    moves, after, changed, rebuild, records = [], {}, [], [], []
    for g in merges:
        records.append(_merge_group(root, g, runs.THIS_RUN, moves, after, changed,
                                    rebuild))
    gone = {m["name"] for r in records for m in r["merged"]}
    listing = {name: faceset_listing(after[f"{name}/{MANIFEST_NAME}"]) for name in rebuild}
    counts = {"groups": len(merges), "merged": len(gone),
              "faces_moved": sum(1 for a, _ in moves if "/" in a)}
    return runs.commit(root, STEP, after, changed, counts, log, moves=moves, rebuild=rebuild,
                       listing=listing, remove=gone,
                       update=lambda top: top.setdefault(MERGED_SECTION, []).extend(records))

