"""``export-swap``: swap-ready facesets (ranked single-face PNG crops + ``.fsz`` bundles).

Layout of OUT and every manifest body: formats/swapset.py (docs/manifest-format.md,
"Swap-ready export"); with --candidates also OUT/_candidates/to_faceset_NNN/, new_NNN/.
Every faceset is built in a staging folder and swapped in whole (fsutil.replace_dir).
"""
from __future__ import annotations

import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..core.crop import Crop, single_face_crop
from ..core.near import (DEFAULT_MAX_DISTANCE, DEFAULT_SIZE_TOLERANCE, components, near_pairs,
                         relative_sizes, same_relative_size)
from ..core.quality import FaceQuality, cache_row, face_quality
from ..core.selection import FaceSelection, entry_for, groups_by_label, select_faces, subset
from ..engine import assign_nearest, cluster_faces, normalize_rows
from ..formats.cache import FaceCache, load_cache
from ..formats.manifest import (CLUSTER_MANIFEST, FACESET_NAME, REFINE_MANIFEST,
                                SWAP_FACESET_MANIFEST, ManifestError, is_face_sets_output,
                                load_manifest, new_manifest, safe_member_path, staging_dir,
                                write_manifest)
from ..formats.swapset import (CANDIDATES_DIR, DROPPED_DIR, FACES_DIR, MANIFEST_NAME,
                               MULTIFACE_AUDIT, NAME_FILE, NAME_TEMPLATE, PREVIEW,
                               candidates_manifest, faceset_listing, faceset_manifest,
                               maintenance_sections, swap_manifest, write_bundles)
from ..formats.report import write_report
from ..io.fsutil import atomic_write_bytes, replace_dir
from ..io.imageio import ImageError, decode, read_header, scale_for


# ---- the export run ---------------------------------------------------------------------
@dataclass
class ExportParams:
    outlier_threshold: float
    min_face_short: float = 100.0
    out_size: int = 512
    pad_ratio: float = 0.5
    top_n: int = 30
    dup_distance: float = DEFAULT_MAX_DISTANCE
    dup_size_tolerance: float = DEFAULT_SIZE_TOLERANCE
    candidates: bool = False
    candidate_match_threshold: float | None = None
    candidate_min_score: float = 0.40
    workers: int = 2


@dataclass
class Planned:
    """One face to crop: where it goes and what the manifest will say about it."""
    row: int
    key: str
    sha256: str
    target: str             # faceset name, or a _candidates folder name
    entry: dict
    score: float
    crop: Crop | None = None


def _entry(cache: FaceCache, sel: FaceSelection, i: int, q: FaceQuality,
           distance: float | None) -> dict:
    e = entry_for(cache, sel, i)
    e.pop("files", None)
    e.update(pose=[round(float(v), 2) for v in q.pose], pose_method=q.pose_method,
             quality=q.components, score=q.score)
    if distance is not None:
        e["distance"] = round(float(distance), 4)
    return e


def select_for_swap(cache: FaceCache, sel: FaceSelection, members: np.ndarray,
                    quality: list[FaceQuality], p: ExportParams
                    ) -> tuple[np.ndarray, list[int], list[dict]]:
    """Gate one faceset: (centroid, kept member positions, dropped entries with reasons)."""
    emb = sel.embeddings[members]
    centroid = normalize_rows(emb.mean(axis=0, keepdims=True))[0]
    dist = 1.0 - emb @ centroid
    f = cache.faces
    dropped: list[dict] = []
    alive = np.ones(len(members), dtype=bool)

    def drop(k: int, reason: str, **extra) -> None:
        alive[k] = False
        dropped.append(dict(_entry(cache, sel, members[k], quality[members[k]], dist[k]),
                            reason=reason, **extra))

    for k in range(len(members)):
        if dist[k] > p.outlier_threshold:
            drop(k, "outlier")
        elif f["face_short"][sel.rows[members[k]]] < p.min_face_short:
            drop(k, "small")
    # one face per source photo: the one nearest the centroid
    best_of: dict[str, int] = {}
    for k in np.flatnonzero(alive):
        s = str(sel.sha256[members[k]])
        if s not in best_of or dist[k] < dist[best_of[s]]:
            best_of[s] = k
    for k in np.flatnonzero(alive):
        if best_of[str(sel.sha256[members[k]])] != k:
            drop(k, "same_source", kept=str(sel.keys[members[best_of[str(sel.sha256[members[k]])]]]))
    # visual near-duplicates (dedup's rule): keep the best-scoring face of each group
    live = np.flatnonzero(alive)
    sub = subset(sel, members[live])
    pairs, _ = near_pairs(sub.embeddings, p.dup_distance)
    if len(pairs):
        pairs = pairs[same_relative_size(relative_sizes(cache, sub), pairs,
                                         p.dup_size_tolerance)]
    for group in components(len(live), pairs):
        ks = live[group]
        best = max(ks, key=lambda k: (quality[members[k]].score, -k))
        for k in ks:
            if k != best:
                drop(k, "near_duplicate", duplicate_of=str(sel.keys[members[best]]))
    return centroid, [int(k) for k in np.flatnonzero(alive)], dropped


# ---- cropping: every source photo decoded once ------------------------------------------
def _decode_source(paths: list[str], width: int, height: int, min_side: float,
                   out_size: int) -> tuple[np.ndarray | None, float, str]:
    """(image, scale = full px per decoded px, error) for one source photo, decoded once at
    the coarsest DCT scale that still gives every crop ``out_size`` pixels."""
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        return None, 1.0, "source_missing"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        header = read_header(data)
        if (header.width, header.height) != (width, height):
            return None, 1.0, "source_changed"
        image = decode(data, scale_for(int(min_side), out_size))
    except (OSError, ImageError):
        return None, 1.0, "source_unreadable"
    DECODES[0] += 1
    return image, width / image.shape[1], ""


DECODES = [0]   # decodes performed by this process (the benchmark reads it)


def crop_all(cache: FaceCache, sel: FaceSelection, plans: list[Planned], detect,
             p: ExportParams, stage_of: dict[str, Path], progress: bool) -> int:
    """Crop every planned face into its staging folder as ``faces/tmp_<n>.png``; sets
    ``plan.crop``. Faces are grouped by source so each file is decoded once (threads decode
    ahead while the main thread detects). Returns the number of sources decoded."""
    by_sha: dict[str, list[int]] = {}
    for n, plan in enumerate(plans):
        by_sha.setdefault(plan.sha256, []).append(n)
    files = {s: r for r, s in enumerate(cache.files["sha256"].tolist())}
    f = cache.faces

    def load(sha: str):
        r = files[sha]
        sides = [float(max(f["bbox"][plans[n].row][2] - f["bbox"][plans[n].row][0],
                           f["bbox"][plans[n].row][3] - f["bbox"][plans[n].row][1]))
                 * (1 + 2 * p.pad_ratio) for n in by_sha[sha]]
        return _decode_source(sel.locations.get(sha, []), int(cache.files["width"][r]),
                              int(cache.files["height"][r]), min(sides), p.out_size)

    decoded = 0
    bar = tqdm(total=len(plans), desc="export-swap", unit="crop", disable=not progress)
    shas = list(by_sha)
    with ThreadPoolExecutor(max_workers=max(1, p.workers)) as pool:
        window = max(2, 2 * p.workers)
        futures = deque()
        it = iter(shas)
        for sha in it:
            futures.append((sha, pool.submit(load, sha)))
            if len(futures) >= window:
                break
        while futures:
            sha, fut = futures.popleft()
            nxt = next(it, None)
            if nxt is not None:
                futures.append((nxt, pool.submit(load, nxt)))
            image, scale, error = fut.result()
            decoded += image is not None
            for n in by_sha[sha]:
                plan = plans[n]
                if image is None:
                    plan.crop = Crop(None, [], p.pad_ratio, reason=error)
                else:
                    plan.crop = single_face_crop(detect, image, scale, f["bbox"][plan.row],
                                                 p.out_size, p.pad_ratio)
                    if plan.crop.image is not None:
                        dest = stage_of[plan.target] / FACES_DIR / f"tmp_{n}.png"
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        if not cv2.imwrite(str(dest), plan.crop.image):
                            raise OSError(f"{dest}: could not write the crop")
                        plan.crop.image = None   # on disk now; keep memory flat
                        plan.entry["tmp"] = str(dest)
                bar.update(1)
    bar.close()
    return decoded


def _crop_info(c: Crop) -> dict:
    return {"box": c.box, "pad_ratio": c.pad_ratio, "blanked": c.blanked,
            "redetect_faces": c.faces_found, "redetect_score": c.own_score}


def finish_folder(stage: Path, plans: list[Planned]) -> tuple[list[dict], list[dict]]:
    """Rank the cropped faces of one folder by score, rename their PNGs to faces/NNN.png.
    Returns (kept entries in rank order, entries dropped at the crop)."""
    kept, dropped = [], []
    ok = [pl for pl in plans if pl.crop is not None and pl.crop.reason == ""]
    for pl in plans:
        if pl not in ok:
            dropped.append(dict(pl.entry, reason=pl.crop.reason if pl.crop else "not_cropped"))
    ok.sort(key=lambda pl: (-pl.score, pl.key))
    for rank, pl in enumerate(ok):
        name = f"{FACES_DIR}/{rank:03d}.png"
        os.replace(pl.entry.pop("tmp"), stage / name)
        kept.append(dict({"rank": rank, "file": name}, **pl.entry, crop=_crop_info(pl.crop)))
    for e in dropped:
        e.pop("tmp", None)
    return kept, dropped


def contact_sheet(pngs: list[Path], dest: Path, thumb: int = 128, columns: int = 6) -> None:
    """previews/top_grid.jpg: the crops as a grid of thumbnails, rank order."""
    rows = max(1, -(-len(pngs) // columns))
    sheet = np.full((rows * thumb, columns * thumb, 3), 32, dtype=np.uint8)
    for k, png in enumerate(pngs):
        img = cv2.imread(str(png))
        if img is None:
            continue
        r, c = divmod(k, columns)
        sheet[r * thumb:(r + 1) * thumb, c * thumb:(c + 1) * thumb] = cv2.resize(
            img, (thumb, thumb), interpolation=cv2.INTER_AREA)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise OSError(f"{dest}: could not encode the preview")
    atomic_write_bytes(dest, buf.tobytes())


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


def audited_drops(out: Path) -> dict[str, tuple[Path, dict]]:
    """Faces an audit (audit-multiface) dropped from the previous export in OUT: key ->
    (its faceset folder, its dropped[] entry). A re-export keeps them dropped."""

    found: dict[str, tuple[Path, dict]] = {}
    for d in sorted(out.glob("faceset_*")) if out.is_dir() else []:
        if not FACESET_NAME.fullmatch(d.name) or not (d / MANIFEST_NAME).is_file():
            continue
        for e in load_manifest(d / MANIFEST_NAME, SWAP_FACESET_MANIFEST)["dropped"]:
            if e["reason"] == MULTIFACE_AUDIT and e.get("key"):
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
        shutil.copy2(src, dest)
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


def name_text(name: str, keys: set[str], previous: list[tuple[set[str], str]]) -> str:
    """NAME.txt: the operator's text from the previous export of the same identity (more
    than half of its faces are here again), else a fresh template."""
    for prev_keys, text in previous:
        if prev_keys and len(prev_keys & keys) * 2 > len(prev_keys):
            return text
    return NAME_TEMPLATE


# ---- the whole command ------------------------------------------------------------------
def _is_export_out(out: Path) -> bool:
    """OUT is ours to rewrite: made by face-sets, or holding only what export-swap makes
    (a first run killed before its top-level manifest)."""
    if not out.exists() or is_face_sets_output(out):
        return True
    return all(p.name.startswith(".") or p.name == CANDIDATES_DIR
               or (p.name.startswith("faceset_") and is_face_sets_output(p))
               for p in out.iterdir())


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
                                 f"to_{names[k]}", _entry(cache, sel, i, quality[i], d),
                                 quality[i].score))
    rest = idx[near < 0]
    if len(rest) >= 2:
        labels = cluster_faces(sel.embeddings[rest], p.candidate_match_threshold,
                               sel.cannot_link(rest))
        for g, members in enumerate(m for m in groups_by_label(labels) if len(m) >= 2):
            for i in rest[members]:
                plans.append(Planned(int(sel.rows[i]), str(sel.keys[i]), str(sel.sha256[i]),
                                     f"new_{g:03d}", _entry(cache, sel, i, quality[i], None),
                                     quality[i].score))
    return plans


def run_export(cache_path: str | os.PathLike, refine_manifest: str | os.PathLike,
               out: str | os.PathLike, params: ExportParams, load_detector,
               raw_manifest: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """The whole ``export-swap`` command; returns the top-level manifest."""
    t0 = time.monotonic()
    out = Path(out)
    if params.candidates and not raw_manifest:
        raise ValueError("--candidates needs --raw-manifest RAW_OUT/manifest.json (the "
                         "manifest of `cluster`)")
    if not _is_export_out(out):
        raise FileExistsError(f"{out} exists and was not made by face-sets; choose an empty "
                              "or new output folder")
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

    audit = audited_drops(out)

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
        if not members:
            continue
        members = np.array(members, dtype=np.int64)
        name = f"faceset_{len(facesets):03d}"
        centroid, kept, dropped = select_for_swap(cache, sel, members, quality, params)
        # faces an audit of the previous export dropped stay dropped (with its record)
        audited = [audit[str(sel.keys[i])] for i in members if str(sel.keys[i]) in audit]
        audited_keys = {e["key"] for _, e in audited}
        kept = [k for k in kept if str(sel.keys[members[k]]) not in audited_keys]
        dropped = [e for e in dropped if e["key"] not in audited_keys]
        dist = 1.0 - sel.embeddings[members] @ centroid
        for k in kept:
            i = members[k]
            plans.append(Planned(int(sel.rows[i]), str(sel.keys[i]), str(sel.sha256[i]), name,
                                 _entry(cache, sel, i, quality[i], dist[k]), quality[i].score))
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
        kept, crop_dropped = finish_folder(stage, by_target.get(name, []))
        carried = carry_dropped(stage, fs["audited"], out / name, carried_from)
        m = faceset_manifest(head, name, fs["source_faceset"], run_id, params.top_n,
                             fs["centroid"], kept, fs["dropped"] + crop_dropped + carried,
                             fs["faces_in"], [e["key"] for e in carried])
        for reason, n in m["summary"]["dropped"].items():
            dropped_total[reason] = dropped_total.get(reason, 0) + n
        (stage / FACES_DIR).mkdir(exist_ok=True)
        write_bundles(stage, m)
        contact_sheet([stage / e["file"] for e in kept[:params.top_n]], stage / PREVIEW)
        atomic_write_bytes(stage / NAME_FILE, name_text(
            name, {e["key"] for e in kept}, previous).encode("utf-8"))
        write_manifest(stage / MANIFEST_NAME, m)
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
                        maintenance_sections(out), sum(fs["faces_in"] for fs in facesets),
                        dropped_total,
                        sum(1 for pl in plans if pl.crop and pl.crop.reason == ""), decoded,
                        round(time.monotonic() - t0, 2))
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
