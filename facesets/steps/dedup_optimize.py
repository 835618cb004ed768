"""``dedup-optimize``: take duplicate face PNGs out of a swap-ready folder.

  identical  PNGs with the same bytes (sha256) in any facesets: the best-scoring copy stays
             (then the lowest faceset name and rank), the others go;
  near       faces of one faceset whose embeddings (the cache the top-level manifest names,
             looked up by the faces' keys) are within the near threshold of a better-scoring
             face kept (greedy by score, never transitive).
A face that goes moves to its faceset's faces/_dropped/ and to ``dropped[]`` (reason
``dedup_identical`` or ``dedup_near``, ``duplicate_of`` the face it duplicates); the kept
faces keep their rank and file; bundles are rebuilt. One recorded run (core/runs.py):
undoable, finished by the next command after a kill.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import runs
from ..core.library import Faceset, now
from ..formats.manifest import SWAP_FACESET_MANIFEST, load_manifest
from ..formats.swapset import MANIFEST_NAME, drop_destination, faceset_listing
from ..io.fsutil import sha256_file
from ..runtime.progress import progress_bar

STEP = "dedup-optimize"
SECTION = "dedup_optimize"     # the top-level manifest's records of this step
IDENTICAL, NEAR = "dedup_identical", "dedup_near"


@dataclass
class Drop:
    faceset: str
    file: str
    reason: str
    duplicate_of: str            # faceset/faces/NNN.png
    similarity: float | None = None


@dataclass
class DedupPlan:
    root: Path
    near_threshold: float        # cosine distance
    faces: int = 0
    drops: list[Drop] = field(default_factory=list)
    no_embedding: int = 0        # faces whose key the cache does not hold (not compared)

    def lines(self) -> list[str]:
        return [f"drop {d.faceset}/{d.file}: {d.reason} of {d.duplicate_of}"
                + (f" (similarity {d.similarity:.3f})" if d.similarity is not None else "")
                for d in self.drops]

    def line(self) -> str:
        n = {r: sum(d.reason == r for d in self.drops) for r in (IDENTICAL, NEAR)}
        return (f"{self.faces} faces, {n[IDENTICAL]} identical and {n[NEAR]} near duplicates "
                f"(similarity >= {1 - self.near_threshold:.2f}) to drop"
                + (f"; {self.no_embedding} faces without an embedding in the cache not "
                   "compared" if self.no_embedding else ""))


def _embeddings(cache_path: str | None, keys: set[str]) -> dict[str, np.ndarray]:
    """Unit embeddings of ``keys`` from the cache (those it holds)."""
    from ..formats.cache import cache_exists, load_cache

    if not cache_path or not cache_exists(cache_path):
        return {}
    cache = load_cache(cache_path)
    all_keys = cache.face_keys()
    rows = [i for i, k in enumerate(all_keys) if k in keys]
    emb = np.asarray(cache.faces["embedding"][rows], np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return {str(all_keys[i]): emb[j] for j, i in enumerate(rows)}


def plan_dedup(root: str | Path, near_threshold: float, progress: bool = True) -> DedupPlan:
    root = Path(root).resolve()
    top = runs.load_top(root)
    plan = DedupPlan(root, near_threshold)
    faces = []   # (faceset, face) with its PNG on disk
    for entry in top.get("facesets", []):
        m = load_manifest(root / entry["name"] / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        faces += [(entry["name"], f) for f in sorted(m["faces"], key=lambda f: f["rank"])
                  if (root / entry["name"] / f["file"]).is_file()]
    plan.faces = len(faces)

    def order(item):
        return (-float(item[1].get("score") or 0.0), item[0], item[1]["rank"])
    faces.sort(key=order)
    kept_by_sha: dict[str, str] = {}
    kept: list[tuple[str, dict]] = []
    for name, face in progress_bar(faces, desc="hashing face PNGs", unit="png", leave=False,
                                   disable=not progress or not faces):
        sha = sha256_file(root / name / face["file"])
        if sha in kept_by_sha:
            plan.drops.append(Drop(name, face["file"], IDENTICAL, kept_by_sha[sha]))
            continue
        kept_by_sha[sha] = f"{name}/{face['file']}"
        kept.append((name, face))
    emb = _embeddings(top.get("cache"), {f["key"] for _, f in kept})
    winners: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, face in kept:           # best first: greedy against the faces kept so far
        vec = emb.get(face["key"])
        if vec is None:
            plan.no_embedding += 1
            continue
        mine = winners.setdefault(name, [])
        best = max(((float(vec @ v), f) for f, v in mine), default=None,
                   key=lambda t: t[0])
        if best is not None and best[0] >= 1 - near_threshold:
            plan.drops.append(Drop(name, face["file"], NEAR, f"{name}/{best[1]}",
                                   round(best[0], 4)))
        else:
            mine.append((face["file"], vec))
    return plan


def apply_dedup(plan: DedupPlan, log=print) -> dict | None:
    """Carry out the plan as one recorded run; its ``runs[]`` entry (None: nothing to do).
    Call under the folder's lock, after ``runs.finish_pending``."""
    if not plan.drops:
        return None
    root = plan.root
    by_set: dict[str, list[Drop]] = {}
    for d in plan.drops:
        by_set.setdefault(d.faceset, []).append(d)
    moves, after, changed, taken = [], {}, [], set()
    for name in sorted(by_set):
        fdir = root / name
        faceset = Faceset.load(fdir)
        drops = {d.file: d for d in by_set[name]}
        parked, extra = {}, {}
        for face in faceset.faces:
            d = drops.get(face["file"])
            if d is None:
                continue
            dest = drop_destination(fdir, face["file"], taken)
            moves.append((f"{name}/{face['file']}", f"{name}/{dest}"))
            parked[face["file"]] = dest
            extra[face["file"]] = dict({"reason": d.reason, "duplicate_of": d.duplicate_of},
                                       **({"similarity": d.similarity}
                                          if d.similarity is not None else {}))
        new = faceset.dropping(parked, "", runs.THIS_RUN, extra)
        faceset.noted(new, STEP, removed=[f["key"] for f in faceset.faces
                                          if f["file"] in drops], kept=len(new["faces"]))
        after[f"{name}/{MANIFEST_NAME}"] = new
        changed += runs.faceset_files(root, name)
    listing = {n: faceset_listing(after[f"{n}/{MANIFEST_NAME}"]) for n in by_set}
    summary = {"identical": sum(d.reason == IDENTICAL for d in plan.drops),
               "near": sum(d.reason == NEAR for d in plan.drops),
               "near_similarity": round(1 - plan.near_threshold, 4),
               "by_faceset": {n: len(v) for n, v in sorted(by_set.items())}}
    record = dict(summary, run=runs.THIS_RUN, when=now())
    return runs.commit(root, STEP, after, changed, summary, log, moves=moves,
                       rebuild=sorted(by_set), listing=listing,
                       update=lambda top: top.setdefault(SECTION, []).append(record))
