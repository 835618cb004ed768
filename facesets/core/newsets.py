"""Add new facesets to an existing swap-ready folder, as one recorded run.

``add_facesets`` is the one way the identity operations make a faceset out of cached faces
(import-folders, discover, eras, the Immich finalize step, the review page). Each new
faceset goes through export-swap's own code (core/swapexport.py): its gates (outlier
distance from the centroid, small faces, one face per photo, near duplicates), the same
quality ranking, the same crop with a re-detection check, the same bundles. What differs
from a whole export is how the result reaches the library:

1. the folders are built under ``_added/.<tag>.partial/`` and renamed whole to
   ``_added/<tag>/`` (``<tag>`` is a digest of the plan and of the library's run count, so
   a re-run after a kill reuses a finished build and a half-written one is thrown away,
   while a run after an undo builds anew beside the parked folders);
2. one recorded run (core/runs.py) moves each ``_added/<tag>/faceset_NNN`` to the top of
   the library, installs its manifest (its bundles rebuilt from it) and the top-level
   manifest with the new listings appended and an ``added[]`` provenance record; existing
   facesets are not touched;
3. ``undo`` moves the new folders back to ``_added/<tag>/`` (nothing is deleted) and puts
   the previous top-level manifest back.

New facesets are numbered past the highest ``faceset_NNN`` anywhere in the library (the
top-level manifest, the folders at its top, ``_merged/`` and ``_split/``), so a number is
never reused while the library lists it or keeps its folder (folders an undo parked in
``_added/<tag>/`` or ``_split/<tag>/`` have a namespace of their own); a caller may give
the name instead (eras: ``faceset_NNN_YYYY-YYYY``). A label (a folder name, a person's
name) goes into NAME.txt and names the bundles (``<label>_top30.fsz``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine import normalize_rows
from ..formats.cache import FaceCache, load_cache
from ..formats.manifest import (FACESET_NAME, SWAP_FACESET_MANIFEST, SWAP_MANIFEST,
                                ManifestError, load_manifest, new_manifest, write_manifest)
from ..formats.runs import MERGED_DIR, RUNS_SECTION
from ..formats.swapset import (ADDED_DIR, ADDED_SECTION, MANIFEST_NAME, NAME_TEMPLATE,
                               SPLIT_DIR, bundle_stem, bundles_entry, faceset_listing,
                               label_stem, swap_manifest)
from ..io.fsutil import commit_dir, internal_dir, remove_on_error
from . import runs
from .quality import cache_row, face_quality
from .selection import FaceSelection, select_faces
from .library import heavy_loss
from .swapexport import (GATE_FLAGS, ExportParams, Planned, crop_all, finish_faceset,
                         plan_entry, select_for_swap)


@dataclass
class NewFaceset:
    """One faceset to add: the cache keys (``sha256:index``) of its faces, and optionally
    its label (NAME.txt, bundle names), its name (default: the next free number), and
    what it came from (kept in its manifest and in the ``added[]`` record)."""
    keys: list[str]
    label: str | None = None
    name: str | None = None
    source: dict = field(default_factory=dict)


@dataclass
class AddResult:
    """What ``add_facesets`` did: the new facesets' names, kept/dropped counts per faceset,
    and the run's ``runs[]`` entry (None on a dry run or when nothing was left to add)."""
    names: list[str]
    kept: dict[str, int]
    dropped: dict[str, int]
    entry: dict | None = None
    skipped: list[str] = field(default_factory=list)   # labels/names left with no face
    by_input: list[str | None] = field(default_factory=list)   # name of each input, or None

    def line(self) -> str:
        sets = ", ".join(f"{n} ({self.kept[n]} faces)" for n in self.names) or "none"
        return f"{len(self.names)} new facesets: {sets}"


NUMBERED = "faceset_"


def used_numbers(root: Path) -> set[int]:
    """Every faceset number the library uses or a record names: the top-level manifest's
    listings and records, the folders at its top, in ``_merged/`` and ``_split/``."""
    root = Path(root)
    names: set[str] = set()
    top = runs.load_top(root)
    names.update(e["name"] for e in top.get("facesets", []))
    for d in (root, root / MERGED_DIR, root / SPLIT_DIR):
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir())
    out = set()
    for n in names:
        if FACESET_NAME.fullmatch(n):
            out.add(int(n[len(NUMBERED):].split("_")[0]))
    return out


def next_names(root: Path, count: int) -> list[str]:
    """``count`` fresh names numbered past the highest number in use."""
    start = max(used_numbers(root), default=-1) + 1
    return [f"{NUMBERED}{start + k:03d}" for k in range(count)]


def name_file_text(label: str | None) -> str:
    """NAME.txt of an added faceset: the label on the first line (the operator's name for
    it), else export's template."""
    if not label:
        return NAME_TEMPLATE
    return label.replace("\n", " ").strip() + "\n"


def _tag(step: str, plan: list[tuple[str, NewFaceset]], params: ExportParams, root: Path) -> str:
    # the run count: a re-run after a kill reuses the build, a run after an undo builds anew
    # (the undone run's folders stay parked as they were)
    content = {"step": step, "root": str(root), "params": vars(params),
               "runs": len(runs.load_top(root).get(RUNS_SECTION, [])),
               "sets": [(n, sorted(fs.keys), fs.label) for n, fs in plan]}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]


def build_folder(root: Path, under: str, tag: str, names: list[str]) -> Path | None:
    """Where to build the faceset folders ``names`` that a run brings in from
    ``<under>/<tag>/`` (the build of ``add_facesets``, split, eras extend, grow's joins):
    None when a build of the same plan finished already (a re-run after a kill reuses it);
    else a fresh ``<under>/.<tag>.partial/`` (a half-built one a kill left is thrown away:
    nothing refers to it), removed if the build fails, to be committed with
    ``fsutil.commit_dir``. A ``<tag>`` folder holding something else is an error."""
    built = root / under / tag
    if all((built / n / MANIFEST_NAME).is_file() for n in names):
        return None
    if built.exists():
        raise ManifestError(f"{built}: exists but does not hold {', '.join(names)}; move it "
                            "away by hand")
    part = remove_on_error(internal_dir(root, under) / f".{tag}.partial")
    if part.exists():
        shutil.rmtree(part)
    return part


def clean_partials(root: Path, under: str = ADDED_DIR) -> None:
    """Half-built ``<under>/.<tag>.partial/`` folders a kill left (nothing refers to them)."""
    d = internal_dir(root, under, create=False)   # never a symlink out of the library
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(".") and p.name.endswith(".partial") and p.is_dir() \
                    and not p.is_symlink():
                shutil.rmtree(p)


def _quality(cache: FaceCache, sel: FaceSelection, idx: np.ndarray, params: ExportParams):
    """face_quality of the selected faces ``idx`` (a list over the whole selection with None
    elsewhere: only the faces a new faceset uses are scored)."""
    q: list = [None] * len(sel)
    for i in idx:
        q[i] = face_quality(cache_row(cache.faces, sel.rows[i]), params.out_size,
                            params.pad_ratio)
    return q


def add_facesets(root: str | os.PathLike, cache_path: str | os.PathLike,
                 new: list[NewFaceset], params: ExportParams,
                 load_detector: Callable[[], object], step: str,
                 provenance: dict | None = None, dry_run: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print,
                 cache: FaceCache | None = None,
                 place: Callable[[str, dict], str | None] | None = None,
                 update_top: Callable[[dict, dict[str, tuple[str, dict]]], None] | None = None,
                 changes=None) -> AddResult:
    """Add ``new`` facesets to the swap-ready folder ``root`` as one recorded run of
    ``step`` (see the module doc); returns what was added.

    ``params``: export-swap's parameters (the same gates, crop and top-N);
    ``load_detector``: loads the detector of the cache's model (the crop re-check);
    ``provenance``: what the caller records about the run (source folders, thresholds...);
    ``dry_run``: plan, gate and name the facesets, crop nothing, change nothing.
    ``place(name, manifest)``: where a built faceset goes, relative to ``root`` (None: its
    name at the top, listed in ``facesets[]``; eras sends small ones to ``_thin/NAME``,
    which are not listed); ``update_top(top, {name: (folder, manifest)})``: adds the
    caller's own records to the new top-level manifest before the run is prepared;
    ``changes`` (core/joining.RunChanges): more the same run does (grow: faces joining
    existing facesets), committed even when no new faceset is left.
    Call it under the folder's lock (``io.fsutil.output_lock``), after
    ``runs.finish_pending``. Faces whose keys the cache lacks are dropped as
    ``not_in_cache``; a faceset left with no face after the gates is skipped.
    """
    root = Path(root).resolve()
    cache = cache if cache is not None else load_cache(cache_path)
    exists = (root / MANIFEST_NAME).is_file()
    if not exists and not dry_run:
        raise FileNotFoundError(f"{root / MANIFEST_NAME}: not a swap-ready library (make one "
                                "with export-swap, or `library import` into a new folder)")
    top = runs.load_top(root) if exists else {}
    sel = select_faces(cache)
    index_of = {k: i for i, k in enumerate(sel.keys.tolist())}
    given = [fs.name for fs in new if fs.name]
    for n in given:
        if not FACESET_NAME.fullmatch(n):
            raise ValueError(f"{n!r} is not a faceset name (faceset_NNN or "
                             "faceset_NNN_YYYY-YYYY)")
        if (root / n).exists() or any(e["name"] == n for e in top.get("facesets", [])):
            raise FileExistsError(f"{root / n}: a faceset of that name exists already")
    count = sum(1 for fs in new if not fs.name)
    fresh = iter(next_names(root, count) if exists else
                 [f"{NUMBERED}{k:03d}" for k in range(count)])
    plan = [(fs.name or next(fresh), fs) for fs in new]
    if len({n for n, _ in plan}) != len(plan):
        raise ValueError("two new facesets were given the same name")
    wanted = np.array(sorted({index_of[k] for _, fs in plan for k in fs.keys
                              if k in index_of}), dtype=np.int64)
    quality = _quality(cache, sel, wanted, params)

    # 1. the gates of export-swap, per new faceset (from the cache alone)
    head = new_manifest(SWAP_FACESET_MANIFEST, os.fspath(cache_path), cache.meta,
                        dict(vars(params), step=step))
    planned: list[Planned] = []
    sets: list[dict] = []
    skipped: list[str] = []
    for name, fs in plan:
        members = np.array(sorted({index_of[k] for k in fs.keys if k in index_of}),
                           dtype=np.int64)
        missing = [{"key": k, "reason": "not_in_cache"} for k in sorted(set(fs.keys))
                   if k not in index_of]
        if len(members) == 0:
            skipped.append(fs.label or name)
            continue
        centroid, kept, dropped = select_for_swap(cache, sel, members, quality, params)
        dist = 1.0 - sel.embeddings[members] @ centroid
        for k in kept:
            i = members[k]
            planned.append(Planned(int(sel.rows[i]), str(sel.keys[i]), str(sel.sha256[i]),
                                   name, plan_entry(cache, sel, i, quality[i], dist[k]),
                                   quality[i].score))
        if not kept:
            skipped.append(fs.label or name)
            continue
        sets.append({"name": name, "fs": fs, "centroid": centroid,
                     "dropped": missing + dropped, "faces_in": len(set(fs.keys)),
                     "kept": len(kept)})
    names = [s["name"] for s in sets]
    planned = [p for p in planned if p.target in names]
    for s in sets:   # nothing dropped silently: a gate that took a fifth is named
        line = heavy_loss(step, s["fs"].label or s["name"], s["faces_in"], s["dropped"],
                          GATE_FLAGS)
        if line:
            log(line)
    result = AddResult(names, {s["name"]: s["kept"] for s in sets},
                       {s["name"]: len(s["dropped"]) for s in sets}, skipped=skipped,
                       by_input=[n if n in names else None for n, _ in plan])
    if dry_run or not (sets or changes):
        return result

    # 2. build the folders under _added/.<tag>.partial/, then rename to _added/<tag>/
    tag = _tag(step, [(s["name"], s["fs"]) for s in sets], params, root)
    clean_partials(root)
    built = root / ADDED_DIR / tag
    part = build_folder(root, ADDED_DIR, tag, names) if sets else None
    if part is not None:
        stage_of = {n: part / n for n in names}
        crop_all(cache, sel, planned, load_detector().detect, params, stage_of, progress, step)
        by_target: dict[str, list[Planned]] = {}
        for pl in planned:
            by_target.setdefault(pl.target, []).append(pl)
        for s in sets:
            fs = s["fs"]
            extra = {"label": fs.label, "added_by": {"step": step, "source": fs.source}}
            stem = label_stem(fs.label) if fs.label else None
            if stem:
                extra["bundle_stem"] = stem
            stage_of[s["name"]].mkdir(parents=True, exist_ok=True)
            finish_faceset(stage_of[s["name"]], head, s["name"], fs.label or "", runs.THIS_RUN,
                           params.top_n, s["centroid"], by_target.get(s["name"], []),
                           s["dropped"], s["faces_in"], name_file_text(fs.label), extra=extra)
        commit_dir(part, built)

    # 3. one recorded run: move them in, install their manifests and the top-level manifest
    def update(new_top: dict, listing: list[dict], manifests: dict[str, dict]) -> None:
        refreshed = changes.listing if changes is not None else {}
        new_top["facesets"] = [refreshed.get(e["name"], e)
                               for e in new_top.get("facesets", [])] + listing
        if not manifests:
            return                    # only the changes: no new faceset, no added[] record
        new_top.setdefault(ADDED_SECTION, []).append(
            {"run": runs.THIS_RUN, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
             "cache": os.path.abspath(cache_path),
             "facesets": [{"name": n, "label": m.get("label"), "faces": len(m["faces"]),
                           "dropped": len(m["dropped"]), "built_in": f"{ADDED_DIR}/{tag}/{n}",
                           "source": (m.get("added_by") or {}).get("source", {})}
                          for n, m in manifests.items()],
             "skipped": skipped, "provenance": provenance or {}})
        if update_top is not None:
            update_top(new_top, {n: ((place(n, m) if place is not None else None) or n, m)
                                 for n, m in manifests.items()})

    extra = {"moves_after": changes.moves, "after": changes.after,
             "changed": changes.changed, "rebuild": changes.rebuild} if changes else {}
    summary = dict({"added": len(names)}, **(changes.summary if changes else {}))
    entry, manifests = commit_new_folders(root, step, f"{ADDED_DIR}/{tag}", names, update,
                                          summary, log, place=place, **extra)
    result.entry = entry
    result.kept = {n: len(m["faces"]) for n, m in manifests.items()}
    return result


def commit_new_folders(root: Path, step: str, built_rel: str, names: list[str],
                       update: Callable[[dict, list[dict], dict[str, dict]], None],
                       summary: dict, log: Callable[[str], None] = print,
                       moves_after: list[tuple[str, str]] = (),
                       after: dict[str, dict | bytes] | None = None,
                       changed: list[str] = (),
                       place: Callable[[str, dict], str | None] | None = None,
                       rebuild: list[str] = ()) -> tuple[dict, dict[str, dict]]:
    """The recorded run that brings finished faceset folders ``built_rel/<name>`` (each with
    its manifest) into the library: each moved to ``<name>``, its manifest installed (run id
    and a history entry added; its bundles rebuilt), then ``moves_after`` (e.g. the folder a
    split archives), the extra ``after`` installs (their previous bytes kept for ``changed``
    files), and the top-level manifest as ``update(top, new listings, new manifests)`` makes
    it; ``place``: another folder for a faceset (not listed), as add_facesets says;
    ``rebuild``: more facesets whose bundles the run rebuilds.
    Returns (the run's ``runs[]`` entry, the new manifests by name)."""
    built = root / built_rel
    moves, installs, listing, manifests, dests = [], {}, [], {}, []
    for n in names:
        m = load_manifest(built / n / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        m["run"] = runs.THIS_RUN
        m["history"] = list(m.get("history") or []) + [
            {"step": step, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": runs.THIS_RUN,
             "faces": len(m["faces"])}]
        dest = (place(n, m) if place is not None else None) or n
        dests.append(dest)
        moves.append((f"{built_rel}/{n}", dest))
        installs[f"{dest}/{MANIFEST_NAME}"] = m
        if dest == n:
            listing.append(faceset_listing(dict(m, bundles=_bundles_of(m))))
        manifests[n] = m
    moves += list(moves_after)
    installs.update(after or {})
    counts = dict(summary, faces=sum(len(m["faces"]) for m in manifests.values()))
    entry = runs.commit(root, step, installs, [MANIFEST_NAME, *changed], counts, log,
                        moves=moves, rebuild=dests + list(rebuild),
                        update=lambda top: update(top, listing, manifests))
    return entry, manifests


def faces_under(sel: FaceSelection, folder: str | os.PathLike) -> np.ndarray:
    """Positions in ``sel`` of the faces whose photo, or a copy of it (an alias), lies
    under ``folder`` (paths as the cache recorded them, compared with the folder
    resolved)."""
    prefix = os.path.join(os.fspath(Path(folder).resolve()), "")
    inside = {s for s, paths in sel.locations.items()
              if any(p.startswith(prefix) for p in paths)}
    return np.flatnonzero(np.fromiter((s in inside for s in sel.sha256.tolist()), dtype=bool,
                                      count=len(sel)))


def _bundles_of(m: dict) -> dict:
    return bundles_entry(bundle_stem(m), int(m["top_n"]), len(m["faces"]))


def ensure_library(root: str | os.PathLike, cache_path: str | os.PathLike,
                   meta: dict, settings: dict | None = None) -> bool:
    """Make ``root`` an empty swap-ready library (a top-level manifest listing no faceset)
    when it does not exist or is an empty folder, so facesets can be added to it; True
    when it was made (recording ``settings``, the section of core/settings.py, when given).
    A folder holding anything else is left as it is (``load_top``
    then says what is wrong with it)."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        return False
    root.mkdir(parents=True, exist_ok=True)
    head = new_manifest(SWAP_MANIFEST, os.fspath(cache_path), meta, {})
    write_manifest(root / MANIFEST_NAME, swap_manifest(
        head, "", "", [], {"to": {}, "new": []}, {}, 0, {}, 0, 0, 0.0, settings))
    return True


def faceset_centroids(root: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(names, unit centroids) of the facesets the top-level manifest lists."""
    from ..formats.manifest import centroid_of

    root = Path(root)
    names, cents = [], []
    for e in runs.load_top(root).get("facesets", []):
        path = root / e["name"] / MANIFEST_NAME
        m = load_manifest(path, SWAP_FACESET_MANIFEST)
        cents.append(centroid_of(m, path, len(cents[0]) if cents else None))
        names.append(e["name"])
    if not cents:
        return [], np.zeros((0, 0), np.float32)
    return names, normalize_rows(np.stack(cents).astype(np.float32))


def near_facesets(root: str | os.PathLike, sel: FaceSelection, idx: np.ndarray,
                  near: float) -> tuple[dict[str, int], np.ndarray]:
    """Which faces ``idx`` (positions in ``sel``) lie within ``near`` of the centroid of a
    faceset the library lists (clustered on their own they would duplicate an identity):
    how many per faceset, and the mask over ``idx``."""
    names, cents = faceset_centroids(root)
    close = np.zeros(len(idx), dtype=bool)
    counts: dict[str, int] = {}
    if not len(idx) or not names:
        return counts, close
    dist = 1.0 - sel.embeddings[idx] @ cents.T
    nearest = dist.argmin(axis=1)
    close = dist[np.arange(len(idx)), nearest] <= near
    for k in nearest[close]:
        counts[names[k]] = counts.get(names[k], 0) + 1
    return counts, close
