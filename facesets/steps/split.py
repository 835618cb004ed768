"""``split``: one faceset of a swap-ready library that holds more than one person, re-clustered
tightly and written as new facesets (the opposite of consolidate).

The faces' embeddings come from the cache the faceset manifest names (its ``cache``), by
each face's ``key``; a face the cache lacks is named in the error (pass another cache).
They are clustered with average linkage at ``threshold`` (faces of one photo never
together); every cluster of at least ``min_faces`` faces is a part. A caller (the review
page) may give the partition instead: lists of the faceset's face files.

Nothing is re-cropped and nothing is deleted: each part is a new faceset folder, numbered
past the library's highest, built under ``_split/.<tag>.partial/`` from copies of its PNGs
(renumbered by rank, score order kept), with its own centroid, manifest, bundles, NAME.txt
and contact sheet. One recorded run then moves the parts in and the original folder whole
to ``_split/faceset_NNN`` (an archive: its PNGs, bundles and NAME.txt as they were, its
manifest gaining ``split_into``); faces of no part (clusters under ``min_faces``) stay only
there. The top-level manifest lists the parts where the original was and gains a
``split[]`` record. ``undo`` moves the original back and the parts to ``_split/<tag>/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import runs
from ..core.cohesion import with_cohesion
from ..core.library import Faceset, display_name
from ..core.newsets import (build_folder, clean_partials, commit_new_folders, name_file_text,
                             next_names)
from ..core.swapexport import contact_sheet
from ..engine import cluster_faces, normalize_rows, pairs_from_groups
from ..formats.cache import cache_exists, load_cache
from ..formats.manifest import (FACESET_NAME, SWAP_FACESET_MANIFEST, ManifestError,
                                load_manifest, safe_member_path, write_manifest)
from ..formats.swapset import (FACES_DIR, MANIFEST_NAME, NAME_FILE, PREVIEW, SPLIT_DIR,
                               SPLIT_SECTION, faceset_manifest, write_bundles)
from ..io.fsutil import atomic_write_bytes, commit_dir, copy_file

STEP = "split"


@dataclass
class SplitPlan:
    root: Path
    name: str
    threshold: float | None          # None: a partition the caller chose
    min_faces: int
    faces: int = 0
    parts: list[list[dict]] = field(default_factory=list)   # face entries, score order
    rest: list[dict] = field(default_factory=list)          # in no part
    cohesion: list[float] = field(default_factory=list)     # each part's mean distance
    between: float | None = None     # smallest centroid distance between two parts
    names: list[str] = field(default_factory=list)          # the parts' new names
    done_by: str = ""                # the run that split this faceset already
    embeddings: dict = field(default_factory=dict, repr=False)   # key -> unit vector
    shown: str = ""                  # "faceset_017 (Anna)", read when planned

    def lines(self) -> list[str]:
        if self.done_by:
            return []
        out = []
        for k, part in enumerate(self.parts):
            name = self.names[k] if k < len(self.names) else f"part {k}"
            out.append(f"{name}: {len(part)} faces (mean distance to their centroid "
                       f"{self.cohesion[k]:.3f}): " + " ".join(f["file"] for f in part))
        if self.rest:
            out.append(f"left in {SPLIT_DIR}/{self.name} (parts under {self.min_faces} "
                       "faces): " + " ".join(f["file"] for f in self.rest))
        return out

    def line(self) -> str:
        if self.done_by:
            return f"{self.shown or self.name} was split already by run {self.done_by}"
        how = (f"at distance {self.threshold}" if self.threshold is not None
               else "by the given partition")
        if len(self.parts) < 2:
            return (f"{self.shown or self.name}: {self.faces} faces are one person {how} "
                    "(nothing to split)")
        gap = f"; nearest parts {self.between:.3f} apart" if self.between is not None else ""
        return (f"{self.shown or self.name}: {self.faces} faces -> {len(self.parts)} parts ("
                + ", ".join(str(len(p)) for p in self.parts) + f") {how}, {len(self.rest)} "
                f"faces in no part{gap}")


def _split_before(root: Path, name: str) -> str:
    """The run (in effect) that split ``name`` already, or ""."""
    top = runs.load_top(root)
    live = {e["id"] for e in top.get("runs", []) if not e.get("undone_by")}
    for rec in top.get(SPLIT_SECTION, []):
        if rec.get("faceset") == name and rec.get("run") in live:
            return rec["run"]
    return ""


def faceset_embeddings(root: Path, name: str, cache_path: str | None = None
                       ) -> tuple[dict, dict[str, np.ndarray]]:
    """(faceset manifest, face key -> unit embedding) from the cache the manifest names (or
    ``cache_path``); a ManifestError names the faces the cache lacks."""
    path = root / name / MANIFEST_NAME
    m = load_manifest(path, SWAP_FACESET_MANIFEST)
    cache_path = cache_path or m.get("cache")
    if not isinstance(cache_path, str) or not cache_exists(cache_path):
        raise ManifestError(f"{path}: the cache it names ({cache_path}) is gone; pass --cache")
    cache = load_cache(cache_path)
    keys = cache.face_keys().tolist()
    row = {k: r for r, k in enumerate(keys)}
    missing = [f["key"] for f in m["faces"] if f["key"] not in row]
    if missing:
        raise ManifestError(f"{path}: {len(missing)} of its {len(m['faces'])} faces are not in "
                            f"the cache {cache_path} (e.g. {', '.join(missing[:3])}); pass the "
                            "cache that made this faceset with --cache")
    rows = [row[f["key"]] for f in m["faces"]]
    emb = normalize_rows(cache.faces["embedding"][rows].astype(np.float32))
    return m, {f["key"]: emb[k] for k, f in enumerate(m["faces"])}


def plan_split(root: str | os.PathLike, name: str, threshold: float | None = None,
               min_faces: int = 3, partition: list[list[str]] | None = None,
               cache_path: str | None = None) -> SplitPlan:
    """The parts of faceset ``name``: by clustering at ``threshold``, or ``partition`` (lists
    of the faceset's face files, e.g. ``faces/003.png``; files in no list stay in the
    archive). Nothing changes."""
    root = Path(root).resolve()
    if not FACESET_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a faceset name (faceset_NNN)")
    plan = SplitPlan(root, name, threshold if partition is None else None, min_faces,
                     shown=display_name(root, name))
    listed = {e["name"] for e in runs.load_top(root).get("facesets", [])}
    if name not in listed:
        plan.done_by = _split_before(root, name)
        if plan.done_by:
            return plan
        raise ManifestError(f"{root / MANIFEST_NAME}: lists no faceset {name}")
    m, emb = faceset_embeddings(root, name, cache_path)
    plan.embeddings = emb
    faces = sorted(m["faces"], key=lambda f: f["rank"])
    plan.faces = len(faces)
    if partition is not None:
        by_file = {f["file"]: f for f in faces}
        seen: set[str] = set()
        groups = []
        for k, files in enumerate(partition):
            part = []
            for file in files:
                if file not in by_file:
                    raise ValueError(f"part {k}: {file!r} is not a face of {name}")
                if file in seen:
                    raise ValueError(f"part {k}: {file!r} is in two parts")
                seen.add(file)
                part.append(by_file[file])
            if part:
                groups.append(part)
    else:
        if threshold is None:
            raise ValueError("split needs a threshold or a partition")
        x = np.stack([emb[f["key"]] for f in faces]) if faces else np.zeros((0, 1), np.float32)
        sha = [f.get("sha256") or f["key"].split(":")[0] for f in faces]
        _, photo = np.unique(np.array(sha, dtype=str), return_inverse=True)
        labels = (cluster_faces(x, threshold, pairs_from_groups(photo.reshape(-1)),
                                engine="exact", progress=False)
                  if len(faces) > 1 else np.zeros(len(faces), np.int64))
        groups = [[faces[i] for i in np.flatnonzero(labels == lab)]
                  for lab in range(int(labels.max()) + 1 if len(faces) else 0)]
    seen_keys = set()
    for part in sorted(groups, key=lambda g: (-len(g), g[0]["rank"])):
        if len(part) >= max(1, min_faces) or partition is not None:
            plan.parts.append(sorted(part, key=lambda f: f["rank"]))
            seen_keys.update(f["key"] for f in part)
    plan.rest = [f for f in faces if f["key"] not in seen_keys]
    cents = []
    for part in plan.parts:
        x = np.stack([emb[f["key"]] for f in part])
        c = normalize_rows(x.mean(axis=0, keepdims=True))[0]
        cents.append(c)
        plan.cohesion.append(float(np.mean(1.0 - x @ c)))
    if len(cents) > 1:
        c = np.stack(cents)
        d = 1.0 - c @ c.T
        plan.between = float(d[np.triu_indices(len(c), 1)].min())
    if len(plan.parts) >= 2:
        plan.names = next_names(root, len(plan.parts))
    return plan


def _tag(plan: SplitPlan) -> str:
    content = {"faceset": plan.name, "names": plan.names,
               "parts": [[f["key"] for f in p] for p in plan.parts]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def _build_part(src: Path, stage: Path, orig: dict, name: str, part: list[dict],
                centroid: np.ndarray, run_label: str) -> None:
    """A part's folder in ``stage``: copies of its PNGs as faces/NNN.png (rank order), its
    manifest, bundles, NAME.txt and contact sheet."""
    stage.mkdir(parents=True, exist_ok=True)
    kept = []
    for rank, f in enumerate(part):
        dest = f"{FACES_DIR}/{rank:03d}.png"
        (stage / FACES_DIR).mkdir(exist_ok=True)
        copy_file(safe_member_path(src, f["file"], "faces[].file", src / MANIFEST_NAME),
                  stage / dest)
        kept.append(dict(f, rank=rank, file=dest, split_from={"faceset": orig["name"],
                                                               "file": f["file"]}))
    head = {k: orig[k] for k in ("format", "version", "tool_version", "created", "cache",
                                 "model", "model_id", "parameters") if k in orig}
    m = with_cohesion(Faceset.of(faceset_manifest(
        head, name, orig.get("source_faceset", ""), run_label, int(orig["top_n"]), centroid,
        kept, [], len(part), [])).with_section("split_from", orig["name"]))
    write_bundles(stage, m)
    contact_sheet([stage / e["file"] for e in kept[:int(orig["top_n"])]], stage / PREVIEW)
    atomic_write_bytes(stage / NAME_FILE, name_file_text(None).encode("utf-8")
                       + f"# split from {orig['name']}\n".encode("utf-8"))
    write_manifest(stage / MANIFEST_NAME, m)


def apply_split(plan: SplitPlan, log=print) -> dict | None:
    """Carry out the plan as one recorded run (see the module doc); its ``runs[]`` entry
    (None when there are fewer than two parts or it was split already). Call under the
    folder's lock after ``runs.finish_pending``."""
    if plan.done_by or len(plan.parts) < 2:
        return None
    root, name = plan.root, plan.name
    src = root / name
    orig = load_manifest(src / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
    tag = _tag(plan)
    rel = f"{SPLIT_DIR}/{tag}"
    clean_partials(root, SPLIT_DIR)
    built = root / rel
    part_dir = build_folder(root, SPLIT_DIR, tag, plan.names)
    if part_dir is not None:
        for n, part in zip(plan.names, plan.parts):
            x = np.stack([plan.embeddings[f["key"]] for f in part])
            _build_part(src, part_dir / n, orig, n, part,
                        normalize_rows(x.mean(axis=0, keepdims=True))[0], runs.THIS_RUN)
        commit_dir(part_dir, built)
    archive = f"{SPLIT_DIR}/{name}"
    if (root / archive).exists():
        raise ManifestError(f"{root / archive} exists already; move it away by hand")
    files = {f["file"]: f"{n}/{g['file']}" for n, part in zip(plan.names, plan.parts)
             for f, g in zip(part, sorted(load_manifest(built / n / MANIFEST_NAME,
                                                        SWAP_FACESET_MANIFEST)["faces"],
                                          key=lambda e: e["rank"]))}
    source = Faceset.of(orig, src)
    gone = source.noted(source.with_section("split_into", {
        "facesets": plan.names, "run": runs.THIS_RUN, "threshold": plan.threshold,
        "files": files, "in_no_part": [f["file"] for f in plan.rest]}), STEP,
        split_into=plan.names)

    def update(top: dict, listing: list[dict], manifests: dict[str, dict]) -> None:
        out = []
        for e in top.get("facesets", []):
            out += listing if e["name"] == name else [e]
        top["facesets"] = out
        top.setdefault(SPLIT_SECTION, []).append(
            {"run": runs.THIS_RUN, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": STEP,
             "faceset": name, "moved_to": archive, "threshold": plan.threshold,
             "parts": [{"name": n, "faces": len(m["faces"]), "built_in": f"{rel}/{n}"}
                       for n, m in manifests.items()],
             "in_no_part": len(plan.rest), "between": plan.between})

    entry, _ = commit_new_folders(
        root, STEP, rel, plan.names, update, {"split": name, "parts": len(plan.names)}, log,
        moves_after=[(name, archive)], after={f"{archive}/{MANIFEST_NAME}": gone},
        changed=[f"{name}/{MANIFEST_NAME}"])
    return entry
