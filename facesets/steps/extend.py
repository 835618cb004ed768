"""``extend``: fold faces embedded after a cluster/refine run into its outputs, numbering kept.

New faces are the cached faces (of photos that still have a location) that the raw
manifest does not list. For the raw output (RAW_OUT, `cluster`'s):
  1. each new face joins the person it is nearest to on average, when its average cosine
     distance to the person's current faces is within ``threshold`` (the average-linkage
     rule cluster used), unless that person already holds a face of the same photo
     (cannot-link; of two new faces of one photo heading for one person the nearer joins);
  2. the rest are clustered among themselves (the engine, same threshold, cannot-link):
     clusters of 2+ become person_NNN numbered past the current maximum (largest first),
     clusters of one go to _singletons; new photos without a face go to _noface.
Old singletons are not revisited (a second photo of a singleton's person starts a new
person or singleton; re-run `cluster` to regroup everything).
With REFINE_OUT (`refine`'s) the new faces not yet considered there grow the facesets the
same way with refine's recorded parameters: a face must pass its quality gates, be within
its initial threshold on average and within its outlier threshold of the faceset centroid;
the rest go through refine's own stages (refine.refine_labels: cluster, merge, gates,
outliers, at least ``min_faces`` images) and what survives becomes new faceset_NNN past
the maximum. Photos are placed with the link mode and flat names the outputs were made
with. Each manifest is rewritten atomically (refine's first: faces it considered are listed
in its ``extended`` record, so a kill between the two writes is picked up by the raw side
alone) with an ``extended`` record; a run with nothing new writes nothing.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from ..core.joining import join_nearest
from ..core.refinement import RefineParams, quality_mask, refine_labels
from ..core.selection import FaceSelection, entry_for, groups_by_label, select_faces, subset
from ..core.thresholds import resolve_with_source
from ..engine import cluster_faces
from ..formats.cache import STATUS_ERROR, STATUS_NOFACE, FaceCache
from ..formats.manifest import (CLUSTER_MANIFEST, CLUSTER_MANIFEST_FILE, FACESET_NAME, PERSON_NAME,
                                REFINE_MANIFEST, REFINE_MANIFEST_FILE, ManifestError,
                                cluster_summary, error_entry, faceset_entry, load_manifest,
                                noface_entry, person_entry, raw_extended_record,
                                refine_extended_record, write_manifest)
from ..io.fsutil import remove_temp_files
from ..io.materialize import FLAT_NAME, place_all

RAW_GROUPS = re.compile(rf"{PERSON_NAME.pattern}|_singletons|_noface")


def next_number(names: list[str], prefix: str) -> int:
    """One past the highest NNN of names like prefix_NNN (0 when there is none)."""
    nums = [int(m.group(1)) for n in names if (m := re.fullmatch(rf"{prefix}_(\d+)", n))]
    return max(nums) + 1 if nums else 0


def _members(sel: FaceSelection, entries: list[dict]) -> list[list[int]]:
    pos = {k: i for i, k in enumerate(sel.keys.tolist())}
    return [[pos[f["key"]] for f in e["faces"] if f["key"] in pos] for e in entries]


def _listed_keys(manifest: dict, groups: str, *extra: str) -> set[str]:
    keys = {f["key"] for e in manifest.get(groups, []) for f in e["faces"]}
    for name in extra:
        keys |= {f["key"] for f in manifest.get(name, [])}
    return keys


def _place(cache: FaceCache, sel: FaceSelection, i: int, folder: Path, link: str,
           missing: list[str]) -> dict:
    placed, miss = place_all(sel.locations[sel.sha256[i]], folder, link)
    missing += miss
    return entry_for(cache, sel, i, placed)


def _new_photos(cache: FaceCache, sel: FaceSelection, manifest: dict, out: Path, link: str,
                missing: list[str]) -> tuple[list[dict], list[dict]]:
    """Photos without faces and unreadable files the raw manifest does not list yet."""
    known_noface = {e["sha256"] for e in manifest.get("noface", [])}
    known_errors = {(e["sha256"], e["path"]) for e in manifest.get("errors", [])}
    noface, errors = [], []
    for sha, path, status, err in zip(cache.files["sha256"].tolist(),
                                      cache.files["path"].tolist(),
                                      cache.files["status"].tolist(),
                                      cache.files["error"].tolist()):
        locs = sel.locations.get(sha)
        if not locs:
            continue
        if status == STATUS_NOFACE and sha not in known_noface:
            placed, miss = place_all(locs, out / "_noface", link)
            missing += miss
            noface.append(noface_entry(sha, locs, placed))
        elif status == STATUS_ERROR and (sha, path) not in known_errors:
            errors.append(error_entry(sha, path, err))
    for path, err in zip(cache.paths["path"].tolist(), cache.paths["error"].tolist()):
        if err and ("", path) not in known_errors:
            errors.append(error_entry("", path, err))
    return noface, errors


def extend_raw(cache: FaceCache, sel: FaceSelection, manifest: dict, out: Path,
               new: np.ndarray, threshold: float, engine: str, when: str) -> dict | None:
    """Add the new faces (selection indices) and photos to the raw output; the record of
    what was added, or None when there was nothing to add (manifest untouched)."""
    link = manifest.get("parameters", {}).get("link", "copy")
    persons = manifest["persons"]
    missing: list[str] = []
    noface, errors = _new_photos(cache, sel, manifest, out, link, missing)
    if len(new) == 0 and not noface and not errors:
        return None
    joined = join_nearest(sel, new, _members(sel, persons), threshold)
    added: dict[str, int] = {}
    for k in np.flatnonzero(joined >= 0):
        person = persons[joined[k]]
        person["faces"].append(_place(cache, sel, new[k], out / person["name"], link, missing))
        added[person["name"]] = added.get(person["name"], 0) + 1
    for person in persons:
        if person["name"] in added:
            person.update(person_entry(person["name"], person["faces"]))
    rest = new[joined < 0]
    labels = cluster_faces(sel.embeddings[rest], threshold, sel.cannot_link(rest), engine)
    number = next_number([p["name"] for p in persons], "person")
    new_persons, singletons = [], []
    for members in (groups_by_label(labels) if len(rest) else []):
        if len(members) >= 2:
            name = f"person_{number:03d}"
            number += 1
            faces = [_place(cache, sel, i, out / name, link, missing) for i in rest[members]]
            persons.append(person_entry(name, faces))
            new_persons.append(name)
        else:
            singletons.append(_place(cache, sel, rest[members[0]], out / "_singletons", link,
                                     missing))
    manifest.setdefault("singletons", []).extend(singletons)
    manifest.setdefault("noface", []).extend(noface)
    manifest.setdefault("errors", []).extend(errors)
    manifest["missing_sources"] = sorted(set(manifest.get("missing_sources", [])) | set(missing))
    summary = manifest.setdefault("summary", {})
    summary.update(cluster_summary(len(persons), len(manifest["singletons"]),
                                   len(manifest["noface"]), len(manifest["errors"]),
                                   int(summary.get("faces", 0)) + len(new),
                                   len(manifest["missing_sources"])))
    record = raw_extended_record(when, threshold, int(len(new)), added, new_persons,
                                 len(singletons), len(noface), len(errors))
    manifest.setdefault("extended", []).append(record)
    return record


def refine_params(manifest: dict) -> RefineParams:
    """The parameters a refine manifest was made with."""
    p = manifest.get("parameters", {})
    try:
        return RefineParams(**{k: p[k] for k in RefineParams.__dataclass_fields__ if k in p})
    except TypeError as exc:
        raise ManifestError(f"refine manifest parameters are incomplete ({exc}); re-run "
                            "refine") from None


def extend_refine(cache: FaceCache, sel: FaceSelection, manifest: dict, out: Path,
                  new: np.ndarray, when: str) -> dict | None:
    """Grow the facesets with the new faces not yet considered there (see module doc)."""
    considered = _listed_keys(manifest, "facesets") | {
        k for rec in manifest.get("extended", []) for k in rec.get("considered", [])}
    new = np.array([i for i in new if sel.keys[i] not in considered], dtype=np.int64)
    if len(new) == 0:
        return None
    params = refine_params(manifest)
    link = manifest.get("parameters", {}).get("link", "copy")
    facesets = manifest["facesets"]
    missing: list[str] = []
    gates = quality_mask(cache, subset(sel, new), params)
    failed = np.any(np.stack(list(gates.values())), axis=0)
    dropped = {reason: int(m.sum()) for reason, m in gates.items()}
    good = new[~failed]
    # refine's own thresholds: its clustering distance, and its outlier gate on the centroid
    joined = join_nearest(sel, good, _members(sel, facesets), params.initial_threshold,
                          params.outlier_threshold)
    added: dict[str, int] = {}
    for k in np.flatnonzero(joined >= 0):
        fs = facesets[joined[k]]
        fs["faces"].append(_place(cache, sel, good[k], out / fs["name"], link, missing))
        added[fs["name"]] = added.get(fs["name"], 0) + 1
    # the rest go through refine's stages on their own (its gates drop the same faces again)
    rest = np.concatenate([good[joined < 0], new[failed]])
    res = refine_labels(cache, subset(sel, rest), params) if len(rest) else None
    for reason, n in (res.dropped.items() if res else []):
        if reason not in dropped:
            dropped[reason] = n
    number = next_number([f["name"] for f in facesets], "faceset")
    new_sets = []
    valid = res.labels >= 0 if res else np.zeros(0, dtype=bool)
    for members in (groups_by_label(res.labels[valid]) if valid.any() else []):
        name = f"faceset_{number:03d}"
        number += 1
        faces = [_place(cache, sel, i, out / name, link, missing)
                 for i in rest[np.flatnonzero(valid)[members]]]
        facesets.append(faceset_entry(name, faces))
        new_sets.append(name)
        added[name] = len(faces)
    for fs in facesets:
        if fs["name"] in added:
            fs.update(faceset_entry(fs["name"], fs["faces"]))
    kept = sum(added.values())
    summary = manifest.setdefault("summary", {})
    summary.update({"facesets": len(facesets),
                    "faces_in": int(summary.get("faces_in", 0)) + len(new),
                    "faces_kept": int(summary.get("faces_kept", 0)) + kept})
    record = refine_extended_record(
        when, params.initial_threshold, params.outlier_threshold, kept,
        {k: v for k, v in added.items() if k not in new_sets}, new_sets, dropped,
        [str(sel.keys[i]) for i in new])
    manifest.setdefault("extended", []).append(record)
    return record


def remove_partial_writes(out: Path, manifest_name: str, groups: re.Pattern) -> None:
    """Remove the temp files a killed extend left: of its manifest in ``out`` and of photos
    being placed in its group folders (those named like ``groups``). Nothing else."""
    remove_temp_files(out, re.compile(re.escape(manifest_name)))
    for d in out.iterdir() if out.is_dir() else []:
        if d.is_dir() and not d.is_symlink() and groups.fullmatch(d.name):
            remove_temp_files(d, FLAT_NAME)


def run_extend(cache: FaceCache, cache_path: str, raw_out: Path, refine_out: Path | None = None,
               threshold: float | None = None, engine: str = "auto") -> dict:
    """The whole ``extend`` command. Returns {"threshold", "threshold_source", "raw",
    "refine"} with the records of what was added (None where nothing was)."""
    raw_out = Path(raw_out)
    raw_path = raw_out / CLUSTER_MANIFEST_FILE
    raw = load_manifest(raw_path, CLUSTER_MANIFEST)
    refine_path = Path(refine_out) / REFINE_MANIFEST_FILE if refine_out else None
    refine = load_manifest(refine_path, REFINE_MANIFEST) if refine_path else None
    remove_partial_writes(raw_out, CLUSTER_MANIFEST_FILE, RAW_GROUPS)
    if refine_path:
        remove_partial_writes(Path(refine_out), REFINE_MANIFEST_FILE, FACESET_NAME)
    for path, m in ((raw_path, raw), (refine_path, refine)):
        if m is not None and m.get("model_id") and cache.meta.get("model_id") \
                and m["model_id"] != cache.meta["model_id"]:
            raise ManifestError(f"{path}: made from embeddings of {m['model_id']}, but the "
                                f"cache holds {cache.meta['model_id']}; pass the cache it was "
                                "made from")
    # the threshold: flag > calibrated for this cache > the raw run's own > model default
    value, source = resolve_with_source("extend", cache.meta, threshold,
                                        (raw.get("parameters", {}).get("threshold"),
                                         "raw manifest"))
    sel = select_faces(cache)
    known = _listed_keys(raw, "persons", "singletons")
    new = np.array([i for i, k in enumerate(sel.keys.tolist()) if k not in known],
                   dtype=np.int64)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = {"threshold": value, "threshold_source": source, "new_faces": int(len(new)),
              "raw": None, "refine": None,
              "other_cache": [str(path) for path, m in ((raw_path, raw), (refine_path, refine))
                              if m and m.get("cache")
                              and m["cache"] != os.path.abspath(cache_path)]}
    if refine is not None:
        result["refine"] = extend_refine(cache, sel, refine, Path(refine_out), new, when)
        if result["refine"] is not None:
            write_manifest(refine_path, refine)
    result["raw"] = extend_raw(cache, sel, raw, raw_out, new, value, engine, when)
    if result["raw"] is not None:
        write_manifest(raw_path, raw)
    return result
