"""``cluster``: group every cached face into persons; write person folders and manifest.json.

Output (built in a staging folder, then swapped in whole):
  OUT/person_NNN/   clusters of 2+ faces, numbered by size (largest first)
  OUT/_singletons/  photos of one-face clusters
  OUT/_noface/      photos with no face
  OUT/manifest.json every cluster with its faces (cache keys, source paths, aliases)
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.cohesion import MIXED_RATIO, split_distances
from ..core.selection import FaceSelection, entry_for, groups_by_label, select_faces
from ..engine import CLUSTER_MERGE_RATIO, cluster_faces
from ..formats.cache import STATUS_ERROR, STATUS_NOFACE, FaceCache
from ..formats.manifest import (CLUSTER_MANIFEST, CLUSTER_MANIFEST_FILE, cluster_manifest,
                                error_entry, is_face_sets_output, new_manifest, noface_entry,
                                person_entry, start_output, write_manifest)
from ..formats.report import write_report
from ..io.fsutil import replace_dir
from ..io.materialize import place_all
from ..runtime.progress import progress_bar


def write_cluster_output(cache: FaceCache, sel: FaceSelection, labels: np.ndarray, out: Path,
                         link: str, manifest: dict) -> dict:
    """Materialise persons / singletons / noface and the manifest (``manifest``: its head),
    then swap ``out`` in. Returns the manifest."""
    out = Path(out)
    stage = start_output(out)
    persons, singletons, missing = [], [], []
    splits = split_distances(sel.embeddings, labels)
    # placing (copying) tens of thousands of photos takes a while: a bar in a terminal
    for members in progress_bar(groups_by_label(labels), desc="placing photos", unit="cluster",
                                disable=None):
        if len(members) >= 2:
            name = f"person_{len(persons):03d}"
            entries = []
            for i in members:
                placed, miss = place_all(sel.locations[sel.sha256[i]], stage / name, link)
                missing += miss
                entries.append(entry_for(cache, sel, i, placed))
            persons.append(person_entry(name, entries, splits[labels[members[0]]]))
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
            noface.append(noface_entry(sha, locations[sha], placed))
        elif status == STATUS_ERROR:
            errors.append(error_entry(sha, path, err))
    for path, err in zip(cache.paths["path"].tolist(), cache.paths["error"].tolist()):
        if err:
            errors.append(error_entry("", path, err))
    manifest = cluster_manifest(manifest, persons, singletons, noface, errors, missing,
                                int(len(sel)))
    write_manifest(stage / CLUSTER_MANIFEST_FILE, manifest)
    replace_dir(stage, out, is_ours=is_face_sets_output)
    write_report(out)
    return manifest


def run_cluster(cache: FaceCache, cache_path: str, out: Path, threshold: float,
                engine: str = "auto", link: str = "copy",
                merge_ratio: float = CLUSTER_MERGE_RATIO) -> dict:
    """The whole ``cluster`` command: group (average linkage at ``threshold``, then clusters
    whose centroids are within ``merge_ratio`` x threshold merge; 0: no merge), then write
    OUT. Returns the manifest."""
    t0 = time.monotonic()
    sel = select_faces(cache)
    labels = cluster_faces(sel.embeddings, threshold, sel.cannot_link(), engine=engine,
                           merge_ratio=merge_ratio)
    t_cluster = time.monotonic() - t0
    manifest = new_manifest(CLUSTER_MANIFEST, cache_path, cache.meta,
                            {"threshold": threshold, "engine": engine, "link": link,
                             "merge_ratio": merge_ratio})
    manifest["timing"] = {"clustering_s": round(t_cluster, 2)}
    return write_cluster_output(cache, sel, labels, out, link, manifest)


def likely_mixed(manifest: dict, threshold: float) -> list[tuple[str, float]]:
    """The persons whose split distance is at least MIXED_RATIO x ``threshold`` (likely two
    people; core/cohesion.py), most likely first."""
    found = [(p["name"], p["split"]) for p in manifest["persons"]
             if p.get("split", 0.0) >= MIXED_RATIO * threshold]
    return sorted(found, key=lambda f: -f[1])


def mixed_line(manifest: dict, threshold: float, shown: int = 8) -> str | None:
    """One line naming the persons most likely to hold two people, or None."""
    found = likely_mixed(manifest, threshold)
    if not found:
        return None
    names = ", ".join(f"{n} ({d:.3f})" for n, d in found[:shown])
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return (f"{len(found)} of {len(manifest['persons'])} persons may hold two people (split "
            f"distance >= {MIXED_RATIO} x threshold {threshold}; manifest.json persons[].split):"
            f" {names}{more}; check them first")
