"""``cluster``: group every cached face into persons; write person folders and manifest.json.

Output (built in a staging folder, then swapped in whole):
  OUT/person_NNN/   clusters of 2+ faces, numbered by size (largest first)
  OUT/_singletons/  photos of one-face clusters
  OUT/_noface/      photos with no face
  OUT/manifest.json every cluster with its faces (cache keys, source paths, aliases)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cache import STATUS_ERROR, STATUS_NOFACE, FaceCache
from .engine import cluster_faces, normalize_rows, pairs_from_groups
from .fsutil import make_staging, replace_dir
from .manifest import (CLUSTER_MANIFEST, face_entry, is_face_sets_output, new_manifest,
                       write_manifest)
from .materialize import place_all


@dataclass
class FaceSelection:
    """The cached faces that take part in grouping, with what every step needs of them."""

    rows: np.ndarray          # row of each selected face in cache.faces
    embeddings: np.ndarray    # unit-normalised, float32
    keys: np.ndarray          # "sha256:index"
    sha256: np.ndarray
    locations: dict           # sha256 -> [canonical path, aliases...]

    def __len__(self) -> int:
        return len(self.rows)

    def cannot_link(self, subset: np.ndarray | None = None) -> np.ndarray:
        """Pairs of faces from one photo (within ``subset`` rows of this selection)."""
        sha = self.sha256 if subset is None else self.sha256[subset]
        _, groups = np.unique(sha, return_inverse=True)
        return pairs_from_groups(groups.reshape(-1))


def select_faces(cache: FaceCache) -> FaceSelection:
    """Faces whose photo still has a recorded location (moved-away content is left out)."""
    locations = cache.locations()
    sha = cache.faces["sha256"]
    keep = np.fromiter((s in locations for s in sha.tolist()), dtype=bool, count=len(sha))
    rows = np.flatnonzero(keep)
    return FaceSelection(rows=rows,
                         embeddings=normalize_rows(cache.faces["embedding"][rows]),
                         keys=cache.face_keys()[rows], sha256=sha[rows], locations=locations)


def entry_for(cache: FaceCache, sel: FaceSelection, i: int,
              placed: list[str] | None = None) -> dict:
    """Manifest face entry of selected face ``i``."""
    r = sel.rows[i]
    f = cache.faces
    return face_entry(str(sel.keys[i]), str(sel.sha256[i]), sel.locations.get(sel.sha256[i], []),
                      f["bbox"][r], f["det_score"][r], f["face_short"][r], f["blur"][r], placed)


def groups_by_label(labels: np.ndarray) -> list[np.ndarray]:
    """Member indices of each label 0..K-1."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0, True])
    return [order[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)]


def staging_dir(out: Path) -> Path:
    """A fresh folder to build ``out`` in, inside a hidden sibling face-sets owns (marked;
    leftovers of killed runs are removed, nothing else is)."""
    return make_staging(out)


def start_output(out: Path) -> Path:
    """Check ``out`` may be replaced (absent, empty or made by face-sets) and return a
    fresh staging folder to build it in; ``replace_dir`` swaps it in at the end."""
    out = Path(out)
    if out.exists() and not is_face_sets_output(out):
        raise FileExistsError(f"{out} exists and was not made by face-sets; choose an empty "
                              "or new output folder")
    return staging_dir(out)


def write_cluster_output(cache: FaceCache, sel: FaceSelection, labels: np.ndarray, out: Path,
                         link: str, manifest: dict) -> dict:
    """Materialise persons / singletons / noface and the manifest, then swap ``out`` in."""
    out = Path(out)
    stage = start_output(out)
    persons, singletons, missing = [], [], []
    # placing (copying) tens of thousands of photos takes a while: a bar in a terminal
    for members in tqdm(groups_by_label(labels), desc="placing photos", unit="cluster",
                        disable=None):
        if len(members) >= 2:
            name = f"person_{len(persons):03d}"
            entries = []
            for i in members:
                placed, miss = place_all(sel.locations[sel.sha256[i]], stage / name, link)
                missing += miss
                entries.append(entry_for(cache, sel, i, placed))
            persons.append({"name": name, "face_count": len(members),
                            "image_count": len({e["sha256"] for e in entries}),
                            "faces": entries})
        else:
            i = members[0]
            placed, miss = place_all(sel.locations[sel.sha256[i]], stage / "_singletons", link)
            missing += miss
            singletons.append(entry_for(cache, sel, i, placed))
    locations = sel.locations
    noface, errors = [], []
    for sha, path, status, err in zip(cache.files["sha256"].tolist(), cache.files["path"].tolist(),
                                      cache.files["status"].tolist(), cache.files["error"].tolist()):
        if sha not in locations:
            continue
        if status == STATUS_NOFACE:
            placed, miss = place_all(locations[sha], stage / "_noface", link)
            missing += miss
            noface.append({"sha256": sha, "path": locations[sha][0],
                           "aliases": locations[sha][1:], "files": placed})
        elif status == STATUS_ERROR:
            errors.append({"sha256": sha, "path": path, "error": err})
    for path, err in zip(cache.paths["path"].tolist(), cache.paths["error"].tolist()):
        if err:
            errors.append({"sha256": "", "path": path, "error": err})
    manifest.update({
        "summary": {"persons": len(persons), "singletons": len(singletons),
                    "noface": len(noface), "errors": len(errors),
                    "faces": int(len(sel)), "missing_sources": len(missing)},
        "persons": persons, "singletons": singletons, "noface": noface, "errors": errors,
        "missing_sources": sorted(set(missing)),
    })
    write_manifest(stage / "manifest.json", manifest)
    replace_dir(stage, out, is_ours=is_face_sets_output)
    return manifest


def run_cluster(cache: FaceCache, cache_path: str, out: Path, threshold: float,
                engine: str = "auto", link: str = "copy") -> dict:
    """The whole ``cluster`` command: group, then write OUT. Returns the manifest."""
    t0 = time.monotonic()
    sel = select_faces(cache)
    labels = cluster_faces(sel.embeddings, threshold, sel.cannot_link(), engine=engine)
    t_cluster = time.monotonic() - t0
    manifest = new_manifest(CLUSTER_MANIFEST, cache_path, cache.meta,
                            {"threshold": threshold, "engine": engine, "link": link})
    manifest["timing"] = {"clustering_s": round(t_cluster, 2)}
    return write_cluster_output(cache, sel, labels, out, link, manifest)
