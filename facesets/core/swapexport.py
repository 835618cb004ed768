"""What ``export-swap`` does to turn faces of one identity into a swap-ready faceset folder,
shared by every step that makes facesets (export-swap; the identity operations through
core/newsets.py): the gates (``select_for_swap``), the quality-ranked plan of each crop
(``Planned``/``plan_entry``), cropping with every source photo decoded once (``crop_all``),
ranking into ``faces/NNN.png`` (``finish_folder``), the contact sheet and NAME.txt, and the
finished folder (``finish_faceset``). Layout and bodies: formats/swapset.py.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine import normalize_rows
from .cohesion import with_cohesion
from ..formats.cache import FaceCache
from ..formats.manifest import dropped_entry, write_manifest
from ..formats.swapset import (FACES_DIR, MANIFEST_NAME, NAME_FILE, NAME_TEMPLATE, PREVIEW,
                               faceset_manifest, preview_bytes, write_bundles)
from ..io.fsutil import atomic_write_bytes, internal_dir, write_image
from ..io.imageio import ImageError, decode, read_header, scale_for
from ..runtime.progress import progress_bar
from .crop import Crop, single_face_crop
from .near import (DEFAULT_MAX_DISTANCE, DEFAULT_SIZE_TOLERANCE, components, near_pairs,
                   relative_sizes, same_relative_size)
from .quality import FaceQuality
from .selection import FaceSelection, entry_for, subset


# ---- parameters and the plan of one crop ------------------------------------------------
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
    # export-swap --max-occlusion: face key -> highest occlusion probability (a scores file of
    # `occlusion merge`); a face at max_occlusion or above is dropped ("occluded")
    occlusion: dict | None = None
    max_occlusion: float = 1.0


# the flag that sets each of export's gates (named when a gate takes many faces)
GATE_FLAGS = {"outlier": "--swap-outlier-threshold", "small": "--min-face-short",
              "occluded": "--max-occlusion"}


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


def plan_entry(cache: FaceCache, sel: FaceSelection, i: int, q: FaceQuality,
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

    def drop(k: int, reason: str, value: float | None, limit: float | None, **extra) -> None:
        alive[k] = False
        dropped.append(dropped_entry(plan_entry(cache, sel, members[k], quality[members[k]],
                                                dist[k]), reason, value, limit, **extra))

    for k in range(len(members)):
        short = float(f["face_short"][sel.rows[members[k]]])
        occluded = p.occlusion.get(str(sel.keys[members[k]]), 0.0) if p.occlusion else 0.0
        if dist[k] > p.outlier_threshold:
            drop(k, "outlier", dist[k], p.outlier_threshold)
        elif short < p.min_face_short:
            drop(k, "small", short, p.min_face_short)
        elif p.occlusion and occluded >= p.max_occlusion:
            drop(k, "occluded", occluded, p.max_occlusion, occlusion=round(occluded, 4))
    # one face per source photo: the one nearest the centroid
    best_of: dict[str, int] = {}
    for k in np.flatnonzero(alive):
        s = str(sel.sha256[members[k]])
        if s not in best_of or dist[k] < dist[best_of[s]]:
            best_of[s] = k
    for k in np.flatnonzero(alive):
        if best_of[str(sel.sha256[members[k]])] != k:
            best = members[best_of[str(sel.sha256[members[k]])]]
            drop(k, "same_source", dist[k], None, kept=str(sel.keys[best]))
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
                drop(k, "near_duplicate", quality[members[k]].score, None,
                     duplicate_of=str(sel.keys[members[best]]))
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
             p: ExportParams, stage_of: dict[str, Path], progress: bool,
             desc: str = "export-swap") -> int:
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
    bar = progress_bar(total=len(plans), desc=desc, unit="crop", disable=not progress)
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
                        write_image(dest, plan.crop.image)
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
        if pl not in ok:   # the crop's re-detection or the photo's decode: no value
            dropped.append(dropped_entry(pl.entry, pl.crop.reason if pl.crop else "not_cropped",
                                         None, None))
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
    try:
        data = preview_bytes(pngs, thumb, columns)
    except OSError:
        raise OSError(f"{dest}: could not encode the preview") from None
    atomic_write_bytes(dest, data, root=dest.parent.parent)   # FACESET/previews/: no symlink


def name_text(name: str, keys: set[str], previous: list[tuple[set[str], str]]) -> str:
    """NAME.txt: the operator's text from the previous export of the same identity (more
    than half of its faces are here again), else a fresh template."""
    for prev_keys, text in previous:
        if prev_keys and len(prev_keys & keys) * 2 > len(prev_keys):
            return text
    return NAME_TEMPLATE


def finish_faceset(stage: Path, head: dict, name: str, source_faceset: str, run: str,
                   top_n: int, centroid, plans: list[Planned], dropped: list[dict],
                   faces_in: int, name_txt: str | Callable[[set[str]], str],
                   carried: list[dict] | None = None,
                   write: bool = True, extra: dict | None = None) -> dict:
    """Finish one cropped faceset in its staging folder: rank the crops into faces/NNN.png,
    the contact sheet, NAME.txt (``name_txt``, or what it returns for the kept keys); with
    ``write`` also the bundles and the
    manifest. Returns the faceset manifest (``extra``: fields added to it, e.g. a label or
    a bundle stem). ``carried``: dropped entries of an earlier audit kept dropped."""
    carried = carried or []
    kept, crop_dropped = finish_folder(stage, plans)
    m = faceset_manifest(head, name, source_faceset, run, top_n, centroid, kept,
                         dropped + crop_dropped + carried, faces_in, [e["key"] for e in carried])
    m.update(extra or {})
    with_cohesion(m)
    internal_dir(stage, FACES_DIR)
    if write:
        write_bundles(stage, m)
    contact_sheet([stage / e["file"] for e in kept[:top_n]], stage / PREVIEW)
    text = name_txt({e["key"] for e in kept}) if callable(name_txt) else name_txt
    atomic_write_bytes(stage / NAME_FILE, text.encode("utf-8"))
    if write:
        write_manifest(stage / MANIFEST_NAME, m)
    return m
