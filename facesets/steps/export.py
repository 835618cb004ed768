"""``export-swap``: swap-ready facesets (ranked single-face PNG crops + ``.fsz`` bundles).

Layout of OUT and every manifest body: formats/swapset.py (docs/manifest-format.md,
"Swap-ready export"); with --candidates also OUT/_candidates/to_faceset_NNN/, new_NNN/.
Every faceset is built in a staging folder and swapped in whole (fsutil.replace_dir).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..core import runs
from ..core.quality import FaceQuality, cache_row, face_quality
from ..core.selection import FaceSelection, groups_by_label, select_faces
from ..core.swapexport import (DECODES, ExportParams, Planned, crop_all,  # noqa: F401
                               finish_faceset, finish_folder, name_text, plan_entry,
                               select_for_swap)
from ..engine import assign_nearest, cluster_faces
from ..formats.cache import FaceCache, load_cache
from ..formats.manifest import (CLUSTER_MANIFEST, FACESET_NAME, REFINE_MANIFEST,
                                SWAP_FACESET_MANIFEST, SWAP_MANIFEST, ManifestError,
                                is_face_sets_output, load_manifest, new_manifest,
                                safe_member_path, staging_dir, write_manifest)
from ..formats.swapset import (ADDED_SECTION, CANDIDATES_DIR, DROPPED_DIR, FACES_DIR,
                               MANIFEST_NAME, MOVED_OUT_SECTIONS, NAME_FILE, SPLIT_SECTION,
                               candidates_manifest, curated_out,
                               faceset_listing, maintenance_sections, swap_manifest)
from ..formats.runs import RUNS_DIR, RUNS_SECTION, check_runs_section
from ..formats.report import write_report
from ..io.fsutil import copy_file, replace_dir

def previous_names(out: Path) -> list[tuple[set[str], str]]:
    """(face keys, NAME.txt text) of every faceset a previous export left in OUT."""
    found = []
    for d in sorted(out.glob("faceset_[0-9][0-9][0-9]")):
        try:
            prev = load_manifest(d / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
            found.append(({f["key"] for f in prev["faces"]},
                          (d / NAME_FILE).read_text(encoding="utf-8")))
        except (ManifestError, ValueError, OSError, KeyError, TypeError):
            continue
    return found


def curated_drops(out: Path) -> dict[str, tuple[Path, dict]]:
    """Faces taken out of the previous export in OUT after it was made (by hand or by a
    maintenance run: drop-faces, occlusion, dedup-optimize, audit-multiface; swapset.
    curated_out): key -> (its faceset folder, its dropped[] entry). A re-export keeps them
    out, wherever it puts them."""

    found: dict[str, tuple[Path, dict]] = {}
    for d in sorted(out.glob("faceset_*")) if out.is_dir() else []:
        if not FACESET_NAME.fullmatch(d.name) or not (d / MANIFEST_NAME).is_file():
            continue
        for e in load_manifest(d / MANIFEST_NAME, SWAP_FACESET_MANIFEST)["dropped"]:
            if curated_out(e):
                found[e["key"]] = (d, e)
    return found


def carry_dropped(stage: Path, audited: list[tuple[Path, dict]], old_dir: Path,
                  carried_from: set[tuple[Path, str]]) -> list[dict]:
    """Into a faceset's staging folder: the audit's dropped PNGs of its faces (their entries
    returned with ``moved_to`` updated), and whatever else the faceset of the same name held
    in faces/_dropped/ (never lost to a re-export). Copies: the old folder stays whole until
    the new one is swapped in."""

    holding = stage / FACES_DIR / DROPPED_DIR
    entries = []

    def copy_in(src: Path) -> str:
        holding.mkdir(parents=True, exist_ok=True)
        dest, n = holding / src.name, 1
        while dest.exists():
            dest = holding / f"{src.stem}.{n}{src.suffix}"
            n += 1
        copy_file(src, dest)
        return dest.relative_to(stage).as_posix()

    for folder, e in audited:
        e = dict(e)
        src = safe_member_path(folder, e["moved_to"], "dropped[].moved_to",
                               folder / MANIFEST_NAME) if "moved_to" in e else None
        if src is not None and src.is_file() and not src.is_symlink():
            e["moved_to"] = copy_in(src)
        else:
            e.pop("moved_to", None)
        entries.append(e)
    old_holding = old_dir / FACES_DIR / DROPPED_DIR
    if old_holding.is_dir() and not old_holding.is_symlink():
        for src in sorted(old_holding.iterdir()):
            rel = src.relative_to(old_dir).as_posix()
            if src.is_file() and not src.is_symlink() and (old_dir, rel) not in carried_from:
                copy_in(src)
    return entries


# ---- the whole command ------------------------------------------------------------------
def _is_export_out(out: Path) -> bool:
    """OUT is ours to rewrite: made by face-sets, or holding only what export-swap makes
    (a first run killed before its top-level manifest)."""
    if not out.exists() or is_face_sets_output(out):
        return True
    return all(p.name.startswith(".") or p.name == CANDIDATES_DIR
               or (p.name.startswith("faceset_") and is_face_sets_output(p))
               for p in out.iterdir())


def _made_by_identity_ops(out: Path) -> list[str]:
    """Listed facesets of OUT that identity operations made (import-folders, discover, split,
    eras: the ``added[]`` and ``split[]`` records): a re-export would replace or remove them."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return []
    try:
        top = load_manifest(path, SWAP_MANIFEST)
    except (ManifestError, ValueError):
        return []
    listed = {e.get("name") for e in top.get("facesets", [])}
    made = [fs.get("name") for rec in top.get(ADDED_SECTION, []) for fs in rec.get("facesets", [])]
    made += [p.get("name") for rec in top.get(SPLIT_SECTION, []) for p in rec.get("parts", [])]
    return sorted(n for n in set(made) if n in listed)


# steps whose effect a re-export from the refine manifest cannot reproduce (faces or whole
# facesets moved elsewhere): while one of their runs is in effect, export-swap refuses
MOVING_STEPS = ("move-face", "quarantine", "consolidate")


def _moved_by_runs(out: Path) -> list[str]:
    """Runs in effect in OUT (``runs[]``, not undone) that moved faces or facesets out of
    place, and the maintenance sections that record a faceset moved out of the listing
    (``quarantined[]``, ``masked[]``, ``thin_eras[]``, ``merged[]``): a re-export from the
    refine manifest would bring them back."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return []
    top = load_manifest(path, SWAP_MANIFEST)
    found = [f"{e.get('step')} run {e.get('id')}" for e in top.get(RUNS_SECTION, [])
             if isinstance(e, dict) and e.get("step") in MOVING_STEPS
             and not e.get("undone_by")]
    found += [f"{section}[] ({len(top[section])})" for section in MOVED_OUT_SECTIONS
              if isinstance(top.get(section), list) and top[section]]
    return found


def _plan_candidates(cache: FaceCache, sel: FaceSelection, raw: dict, taken: set[str],
                     centroids_: np.ndarray, names: list[str], quality: list[FaceQuality],
                     index_of: dict[str, int], p: ExportParams) -> list[Planned]:
    """Raw singletons near a faceset centroid -> to_<faceset>; the rest that cluster among
    themselves -> new_NNN. Only faces scoring at least candidate_min_score take part."""
    idx = np.array([index_of[e["key"]] for e in raw.get("singletons", [])
                    if e.get("key") in index_of and e["key"] not in taken], dtype=np.int64)
    idx = np.array([i for i in idx if quality[i].score >= p.candidate_min_score],
                   dtype=np.int64)
    if len(idx) == 0:
        return []
    near, dist = assign_nearest(sel.embeddings[idx], centroids_, p.candidate_match_threshold)
    plans = []
    for i, k, d in zip(idx, near, dist):
        if k >= 0:
            plans.append(Planned(int(sel.rows[i]), str(sel.keys[i]), str(sel.sha256[i]),
                                 f"to_{names[k]}", plan_entry(cache, sel, i, quality[i], d),
                                 quality[i].score))
    rest = idx[near < 0]
    if len(rest) >= 2:
        labels = cluster_faces(sel.embeddings[rest], p.candidate_match_threshold,
                               sel.cannot_link(rest))
        for g, members in enumerate(m for m in groups_by_label(labels) if len(m) >= 2):
            for i in rest[members]:
                plans.append(Planned(int(sel.rows[i]), str(sel.keys[i]), str(sel.sha256[i]),
                                     f"new_{g:03d}", plan_entry(cache, sel, i, quality[i], None),
                                     quality[i].score))
    return plans


def refuse_identity_ops(out: Path) -> None:
    """FileExistsError (one line) when the library ``out`` holds facesets identity operations
    made, which a re-export from the refine manifest would replace or remove (`run
    --rebuild` asks before any work)."""
    made = _made_by_identity_ops(out)
    if made:
        raise FileExistsError(f"{out / MANIFEST_NAME}: {', '.join(made[:5])}"
                              f"{' ...' if len(made) > 5 else ''} were made by library import, "
                              "discover or grow, or by faceset split or eras, not from the "
                              "refine manifest; a re-export would replace or remove them: "
                              f"export into a new folder, undo those runs first (`library "
                              f"undo {out} RUN`), or run without --rebuild (grows the library)")


def run_export(cache_path: str | os.PathLike, refine_manifest: str | os.PathLike,
               out: str | os.PathLike, params: ExportParams, load_detector,
               raw_manifest: str | os.PathLike | None = None, progress: bool = True,
               settings: dict | None = None) -> dict:
    """The whole ``export-swap`` command; returns the top-level manifest, which records the
    library's ``settings`` (formats/swapset.settings_section; core/settings.py)."""
    t0 = time.monotonic()
    out = Path(out)
    if params.candidates and not raw_manifest:
        raise ValueError("--candidates needs --raw-manifest RAW_OUT/manifest.json (the "
                         "manifest of `cluster`)")
    if not _is_export_out(out):
        raise FileExistsError(f"{out} exists and was not made by face-sets; choose an empty "
                              "or new output folder")
    refuse_identity_ops(out)
    if (out / RUNS_DIR).is_dir() and (out / MANIFEST_NAME).is_file():
        # a recorded run a kill interrupted is finished first: its records are kept below
        runs.finish_pending(out, print if progress else (lambda _line: None))
    moved = _moved_by_runs(out)
    if moved:
        raise FileExistsError(f"{out / MANIFEST_NAME}: {', '.join(moved[:5])}"
                              f"{' ...' if len(moved) > 5 else ''} moved faces or facesets "
                              "that a re-export would bring back: export into a new folder "
                              f"(or undo those runs first: `library undo {out} RUN`)")
    cache = load_cache(cache_path)
    refine = load_manifest(refine_manifest, REFINE_MANIFEST)
    raw = load_manifest(raw_manifest, CLUSTER_MANIFEST) if params.candidates else None
    sel = select_faces(cache)
    index_of = {k: i for i, k in enumerate(sel.keys.tolist())}
    faces = cache.faces
    quality = [face_quality(cache_row(faces, r), params.out_size, params.pad_ratio)
               for r in sel.rows]
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    head = new_manifest(SWAP_FACESET_MANIFEST, os.fspath(cache_path), cache.meta,
                        dict(vars(params), refine_manifest=os.path.abspath(refine_manifest)))

    audit = curated_drops(out)
    sections = maintenance_sections(out, head)      # runs[] and the rest of the history
    check_runs_section(sections, out / MANIFEST_NAME)

    # 1. gate every faceset (cheap, from the cache alone)
    plans: list[Planned] = []
    facesets: list[dict] = []
    taken: set[str] = set()
    for fs in refine["facesets"]:
        members, missing = [], []
        for e in fs["faces"]:
            (members.append(index_of[e["key"]]) if e["key"] in index_of
             else missing.append(dict(e, reason="not_in_cache")))
        taken.update(e["key"] for e in fs["faces"])
        # faces curated out of the previous export stay out (with their records), and
        # take no part in the gates (centroid, outliers, duplicates)
        audited = [audit[str(sel.keys[i])] for i in members if str(sel.keys[i]) in audit]
        members = [i for i in members if str(sel.keys[i]) not in audit]
        if not members:
            continue
        members = np.array(members, dtype=np.int64)
        name = f"faceset_{len(facesets):03d}"
        centroid, kept, dropped = select_for_swap(cache, sel, members, quality, params)
        dist = 1.0 - sel.embeddings[members] @ centroid
        for k in kept:
            i = members[k]
            plans.append(Planned(int(sel.rows[i]), str(sel.keys[i]), str(sel.sha256[i]), name,
                                 plan_entry(cache, sel, i, quality[i], dist[k]), quality[i].score))
        facesets.append({"name": name, "source_faceset": fs.get("name", ""),
                         "centroid": centroid, "dropped": missing + dropped,
                         "audited": audited, "faces_in": len(fs["faces"])})
    names = [fs["name"] for fs in facesets]
    if params.candidates and facesets:
        plans += _plan_candidates(cache, sel, raw, taken,
                                  np.stack([fs["centroid"] for fs in facesets]), names,
                                  quality, index_of, params)

    # 2. crop everything into staging folders (each source decoded once)
    previous = previous_names(out)
    out.mkdir(parents=True, exist_ok=True)
    stage_of = {name: staging_dir(out / name) for name in names}
    cand_stage = staging_dir(out / CANDIDATES_DIR) if params.candidates else None
    for pl in plans:
        if pl.target not in stage_of:
            stage_of[pl.target] = cand_stage / pl.target
    detect = load_detector().detect if plans else None
    decoded = crop_all(cache, sel, plans, detect, params, stage_of, progress)

    # 3. finish each faceset in its staging folder and swap it in
    by_target: dict[str, list[Planned]] = {}
    for pl in plans:
        by_target.setdefault(pl.target, []).append(pl)
    listing, dropped_total = [], {}
    carried_from = {(d, e["moved_to"]) for fs in facesets for d, e in fs["audited"]}
    for fs in facesets:
        name, stage = fs["name"], stage_of[fs["name"]]
        carried = carry_dropped(stage, fs["audited"], out / name, carried_from)
        m = finish_faceset(stage, head, name, fs["source_faceset"], run_id, params.top_n,
                           fs["centroid"], by_target.get(name, []), fs["dropped"],
                           fs["faces_in"], lambda keys: name_text(name, keys, previous),
                           carried)
        for reason, n in m["summary"]["dropped"].items():
            dropped_total[reason] = dropped_total.get(reason, 0) + n
        replace_dir(stage, out / name, is_ours=is_face_sets_output)
        listing.append(faceset_listing(m))

    # 4. candidates, then the top-level manifest (last), then stale folders of older runs
    candidates = {"to": {}, "new": []}
    if cand_stage is not None:
        for target in sorted(t for t in by_target if t not in names):
            kept, _ = finish_folder(stage_of[target], by_target[target])
            if target.startswith("to_"):
                candidates["to"][target[3:]] = kept
            elif kept:
                candidates["new"].append({"name": target, "faces": kept})
        write_manifest(cand_stage / MANIFEST_NAME, candidates_manifest(head, run_id, candidates))
        replace_dir(cand_stage, out / CANDIDATES_DIR, is_ours=is_face_sets_output)
    top = swap_manifest(head, run_id, os.path.abspath(refine_manifest), listing, candidates,
                        sections, sum(fs["faces_in"] for fs in facesets),
                        dropped_total,
                        sum(1 for pl in plans if pl.crop and pl.crop.reason == ""), decoded,
                        round(time.monotonic() - t0, 2), settings)
    write_manifest(out / MANIFEST_NAME, top)
    keep = set(names) | ({CANDIDATES_DIR} if params.candidates else set())
    for d in out.iterdir():
        stale_faceset = d.name.startswith("faceset_") and d.name not in keep
        stale_cands = d.name == CANDIDATES_DIR and d.name not in keep
        if d.is_dir() and (stale_faceset or stale_cands) and is_face_sets_output(d) \
                and not _holds_uncarried_drops(d, carried_from):
            shutil.rmtree(d)
    write_report(out, progress)
    return top


def _holds_uncarried_drops(faceset_dir: Path, carried_from: set[tuple[Path, str]]) -> bool:
    """Whether a faceset folder about to go holds dropped PNGs (an audit's, or moved there
    by hand) that no new faceset took over: then it stays, so they are never lost."""

    holding = faceset_dir / FACES_DIR / DROPPED_DIR
    return holding.is_dir() and any(
        (faceset_dir, p.relative_to(faceset_dir).as_posix()) not in carried_from
        for p in holding.iterdir())
