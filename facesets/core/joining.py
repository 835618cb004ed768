"""New faces joining existing groups: extend's join rule, and export-swap's gates and crops
for faces that join an existing faceset of a swap-ready library.

``join_nearest`` is the rule `extend` grows raw/ and facesets/ by and `grow` grows a
swap-ready library by. ``gate_joining`` runs export-swap's per-face gates on the faces
joining one faceset (the faces it keeps stay as they are). ``build_joined`` crops them
(export-swap's crop and re-detection check) into a build folder ``_added/<tag>/<faceset>/``
of their own, with a manifest listing them; ``joined_changes`` is what a recorded run
(core/runs.py) does with it: each PNG moved into the faceset's ``faces/`` (numbered past its
highest), the faceset's manifest with the faces added and re-ranked (``Faceset.adding``),
gate-dropped faces in its ``dropped[]``, its bundles rebuilt; the build manifest kept with
its faces moved out (``moved_into``), so an undo, which moves the PNGs back, restores a
folder every PNG of which a manifest names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine import add_rows, assign_nearest, centroids, normalize_rows
from ..formats.cache import FaceCache
from ..formats.manifest import SWAP_FACESET_MANIFEST, dropped_entry, new_manifest
from ..formats.swapset import (ADDED_DIR, FACES_DIR, MANIFEST_NAME, faceset_listing,
                               next_face_number)
from ..io.fsutil import commit_dir
from . import runs
from .library import Faceset
from .newsets import build_folder
from .near import components, near_pairs, relative_sizes, same_relative_size
from .quality import cache_row, face_quality
from .selection import FaceSelection, subset
from .swapexport import ExportParams, Planned, crop_all, finish_faceset, plan_entry


def join_nearest(sel: FaceSelection, new: np.ndarray, groups: list[list[int]],
                 threshold: float, max_centroid_distance: float | None = None) -> np.ndarray:
    """Group (index into ``groups``) each new face joins, -1 for none.

    ``groups``: current members (selection indices) of each group. A face joins the group it
    is nearest to on average, when that average cosine distance to the group's faces is
    within ``threshold`` (the average-linkage rule `cluster` grouped them by; a plain
    centroid distance is smaller and would let in faces clustering would have kept out),
    its distance to the group's centroid within ``max_centroid_distance`` (refine's outlier
    rule) if given, and the group holds no face of its photo; of new faces of one photo
    heading for one group only the nearest joins.
    """
    out = np.full(len(new), -1, dtype=np.int64)
    members = [(g, i) for g, ms in enumerate(groups) for i in ms]
    if len(new) == 0 or not members:
        return out
    labels = np.array([g for g, _ in members])
    emb = sel.embeddings[[i for _, i in members]]
    # the mean member embedding m (not unit length): 1 - e.m is e's average distance to them
    sums = np.zeros((int(labels.max()) + 1, emb.shape[1]), dtype=np.float64)
    add_rows(sums, labels, emb)
    means = (sums / np.maximum(np.bincount(labels), 1)[:, None]).astype(np.float32)
    idx, dist = assign_nearest(sel.embeddings[new], means, threshold)
    # a group without members (none of its faces in this cache) has a zero mean: never near
    if max_centroid_distance is not None:
        unit = centroids(emb, labels)
        ok = idx >= 0
        cdist = 1.0 - np.einsum("ij,ij->i", sel.embeddings[new[ok]], unit[idx[ok]])
        idx[np.flatnonzero(ok)[cdist > max_centroid_distance]] = -1
    held = {(g, sel.sha256[i]) for g, i in members}
    for k in np.argsort(dist, kind="stable"):           # nearest first
        g, photo = int(idx[k]), sel.sha256[new[k]]
        if g >= 0 and (g, photo) not in held:
            out[k] = g
            held.add((g, photo))
    return out


@dataclass
class Joining:
    """The faces joining one faceset: those export's gates keep (``keep``, to crop) and
    those they refuse (``dropped``: entries with reason, value and limit)."""
    name: str
    old: list[int]                       # selection indices of the faceset's faces
    keep: list[Planned] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    # the faceset's own export parameters for the crops (eras: its manifest's); None: the
    # run's
    params: ExportParams | None = None


def gate_joining(cache: FaceCache, sel: FaceSelection, name: str, old: list[int],
                 new: list[int], p: ExportParams) -> Joining:
    """export-swap's per-face gates on the faces ``new`` joining faceset ``name`` (whose
    faces in this cache are ``old``): a face smaller than ``min_face_short``, occluded,
    of a photo the faceset (or a better new face) shows already, or a near duplicate of a
    face it keeps (dedup's rule: a duplicate of an old face goes; of new faces only, the best
    scoring stays) is dropped. The old faces are never touched."""
    j = Joining(name, list(old))
    members = np.array(list(old) + list(new), dtype=np.int64)
    emb = sel.embeddings[members]
    centroid = normalize_rows(emb.mean(axis=0, keepdims=True))[0]
    dist = 1.0 - emb @ centroid
    quality = {int(i): face_quality(cache_row(cache.faces, sel.rows[i]), p.out_size,
                                    p.pad_ratio) for i in new}
    entries = {int(i): plan_entry(cache, sel, i, quality[int(i)], dist[len(old) + k])
               for k, i in enumerate(new)}
    alive = {int(i) for i in new}

    def drop(i: int, reason: str, value, limit, **extra) -> None:
        alive.discard(i)
        j.dropped.append(dropped_entry(entries[i], reason, value, limit, **extra))

    shown = {str(sel.sha256[i]) for i in old}
    dist_of = {int(i): dist[len(old) + k] for k, i in enumerate(new)}
    for i in sorted(alive, key=lambda i: dist_of[i]):     # nearest first
        short = float(cache.faces["face_short"][sel.rows[i]])
        occluded = p.occlusion.get(str(sel.keys[i]), 0.0) if p.occlusion else 0.0
        if short < p.min_face_short:
            drop(i, "small", short, p.min_face_short)
        elif p.occlusion and occluded >= p.max_occlusion:
            drop(i, "occluded", occluded, p.max_occlusion, occlusion=round(occluded, 4))
        elif str(sel.sha256[i]) in shown:
            drop(i, "same_source", None, None)
        else:
            shown.add(str(sel.sha256[i]))
    live = [*old, *sorted(alive)]
    sub = subset(sel, np.array(live, dtype=np.int64))
    pairs, _ = near_pairs(sub.embeddings, p.dup_distance)
    if len(pairs):
        pairs = pairs[same_relative_size(relative_sizes(cache, sub), pairs,
                                         p.dup_size_tolerance)]
    for group in components(len(live), pairs):
        fresh = [live[k] for k in group if k >= len(old)]
        olds = [live[k] for k in group if k < len(old)]
        if not fresh or len(group) < 2:
            continue
        best = None if olds else max(fresh, key=lambda i: (quality[i].score, -i))
        for i in fresh:
            if i != best:
                drop(i, "near_duplicate", quality[i].score, None,
                     duplicate_of=str(sel.keys[olds[0] if olds else best]))
    for i in sorted(alive):
        j.keep.append(Planned(int(sel.rows[i]), str(sel.keys[i]), str(sel.sha256[i]), name,
                              entries[i], quality[i].score))
    return j


def build_joined(root: Path, tag: str, cache: FaceCache, cache_path: str, sel: FaceSelection,
                 joins: list[Joining], p: ExportParams | None,
                 load_detector: Callable[[], object], step: str, progress: bool = True,
                 source: str = "") -> str:
    """Crop the kept faces of ``joins`` into ``_added/<tag>/<faceset>/`` (built in a
    ``.partial`` folder renamed whole; a finished build of the same plan, ``tag``, is reused
    after a kill), each with its join's parameters or ``p``; ``source``: the faceset the
    faces came by (eras: the eras' source). Returns the build folder relative to ``root``."""
    rel = f"{ADDED_DIR}/{tag}"
    built = root / rel
    names = [j.name for j in joins if j.keep]
    part = build_folder(root, ADDED_DIR, tag, names)
    if part is None:
        return rel
    detect = load_detector().detect
    by_params: dict[int, list[Joining]] = {}     # one crop pass (one progress bar) each
    for j in joins:
        if j.keep:
            by_params.setdefault(id(j.params or p), []).append(j)
    for group in by_params.values():
        crop_all(cache, sel, [pl for j in group for pl in j.keep], detect,
                 group[0].params or p, {j.name: part / j.name for j in group}, progress, step)
    # the build manifest's bytes are part of the run's id (core/runs.plan_id keeps them for
    # undo): a build made again after a kill must be the same bytes, so no clock in it
    created = runs.load_top(root).get("created")
    index_of = {k: i for i, k in enumerate(sel.keys.tolist())}
    for j in joins:
        if not j.keep:
            continue
        params = j.params or p
        head = new_manifest(SWAP_FACESET_MANIFEST, cache_path, cache.meta,
                            dict(vars(params), step=step))
        head["created"] = created or head["created"]
        emb = sel.embeddings[[index_of[pl.key] for pl in j.keep]]
        cen = normalize_rows(emb.mean(axis=0, keepdims=True))[0]
        (part / j.name).mkdir(parents=True, exist_ok=True)
        finish_faceset(part / j.name, head, j.name, source, "", params.top_n, cen, j.keep, [],
                       len(j.keep), f"# faces `{step}` cropped for {j.name}\n",
                       extra={"adds_to": j.name})
    commit_dir(part, built)
    return rel


@dataclass
class RunChanges:
    """What a recorded run changes besides the folders it brings in (core/newsets.py's
    ``commit_new_folders``): moves, new bodies (``after``), files whose previous bytes are
    kept (``changed``), facesets whose bundles are rebuilt, and refreshed listings."""
    moves: list[tuple[str, str]] = field(default_factory=list)
    after: dict = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    rebuild: list[str] = field(default_factory=list)
    listing: dict[str, dict] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def joined_changes(root: Path, built_rel: str, joins: list[Joining], sel: FaceSelection,
                   step: str, folders: dict[str, str] | None = None,
                   gated_key: str = "gated_by_run") -> tuple[RunChanges, dict[str, dict]]:
    """The run that brings the faces of ``joins`` (cropped in ``built_rel`` by
    build_joined) into their facesets (see the module doc): ``folders``: a faceset's folder
    when it is not its name (eras); ``gated_key``: the field naming this run in the
    ``dropped[]`` entries of the faces its gates refused (not "run": that marks curation,
    formats/swapset.curated_out). Returns the changes and the new body of each faceset."""
    ch = RunChanges()
    bodies = {}
    index_of = {k: i for i, k in enumerate(sel.keys.tolist())}
    for j in joins:
        folder = (folders or {}).get(j.name, j.name)
        fs = Faceset.load(root / folder)
        crops = {"faces": [], "dropped": []}
        rel = f"{built_rel}/{j.name}/{MANIFEST_NAME}"
        if j.keep:
            crops = Faceset.load(root / built_rel / j.name).body
        nxt = next_face_number(fs.body, fs.folder)
        arriving, files = [], {}
        for face in crops["faces"]:
            dest = f"{FACES_DIR}/{nxt:03d}.png"
            nxt += 1
            ch.moves.append((f"{built_rel}/{j.name}/{face['file']}", f"{folder}/{dest}"))
            files[face["file"]] = dest
            arriving.append(dict(face, file=dest, added_by_run=runs.THIS_RUN))
        if j.keep:     # the build folder keeps its record, its faces moved out
            ch.after[rel] = Faceset.of(crops).emptied(
                "moved_into", {"faceset": j.name, "run": runs.THIS_RUN, "files": files})
            ch.changed.append(rel)
        gone = [dict(d, **{gated_key: runs.THIS_RUN}) for d in j.dropped + crops["dropped"]]
        keys = [index_of[f["key"]] for f in fs.faces + arriving if f["key"] in index_of]
        cen = normalize_rows(sel.embeddings[keys].mean(axis=0, keepdims=True))[0] \
            if keys and arriving else None
        body = fs.noted(fs.adding(arriving, centroid=cen, faces_in=len(j.keep) + len(j.dropped),
                                  dropped=gone), step, added=len(arriving), dropped=len(gone))
        ch.after[f"{folder}/{MANIFEST_NAME}"] = body
        ch.changed += runs.faceset_files(root, folder)
        ch.rebuild.append(folder)
        ch.listing[j.name] = faceset_listing(body)
        bodies[j.name] = body
    return ch, bodies
