"""The swap-ready faceset folder (docs/manifest-format.md, "Swap-ready export"): its file
names, its two ``.fsz`` bundles, and the listing of a faceset in the top-level manifest.

  OUT/faceset_NNN/faces/000.png ...        crops, named by rank (000 best)
  OUT/faceset_NNN/faces/_dropped/          PNGs taken out by a maintenance step
  OUT/faceset_NNN/faceset_NNN_top{N}.fsz   the N best, as 0.png, 1.png, ...
  OUT/faceset_NNN/faceset_NNN_all.fsz      every kept crop, in rank order
  OUT/faceset_NNN/manifest.json            kept faces (+ quality), dropped faces (+ reason)
  OUT/faceset_NNN/NAME.txt                 for the operator (kept across re-runs)
  OUT/faceset_NNN/previews/top_grid.jpg    contact sheet of the top crops
  OUT/_candidates/to_faceset_NNN/, new_NNN/, manifest.json   review crops (--candidates)
  OUT/manifest.json                        every faceset; maintenance sections
export-swap writes these folders; maintenance steps (audit-multiface, and the identity
operations) change them through ``rebuild_bundles`` and ``refresh_listing``.
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Callable

from ..io.fsutil import atomic_write_bytes, remove_temp_files
from .bundle import write_fsz
from .manifest import (COHESION_VERSION, DROPPED_VERSION, FACESET_NAME, MANIFEST_FILE,
                       SWAP_FACESET_MANIFEST, SWAP_MANIFEST, ManifestError, load_manifest,
                       safe_member_path, write_manifest)

FACES_DIR = "faces"
DROPPED_DIR = "_dropped"                 # faces/_dropped/: PNGs a maintenance step took out
PREVIEW = "previews/top_grid.jpg"
NAME_FILE = "NAME.txt"
LABEL_MAX = 200                  # characters of a NAME.txt label that count
NAME_TEMPLATE = "# Write this person's name on the first line; it is kept across re-runs.\n"
MANIFEST_NAME = MANIFEST_FILE            # OUT/manifest.json, OUT/faceset_NNN/manifest.json
CANDIDATES_DIR = "_candidates"
# audit-multiface: its dropped[] reason and its provenance section in the top-level manifest
MULTIFACE_AUDIT = "multiface_audit"
REVIEW_REASON = "review"          # dropped[] reason of a face dropped by hand (drop-faces)
HAND_REMOVED_REASON = "removed from faces/"   # a PNG deleted by hand, found by a rebuild
# sections of the top-level manifest that maintenance steps fill; export-swap creates them
# empty and keeps them (with runs[], occlusion_filter_run and every other key it does not
# write itself: maintenance_sections)
MAINTENANCE_SECTIONS = ("masked", "thin_eras", "merged", MULTIFACE_AUDIT, "added", "split",
                        "eras", "quarantined")
# sections recording a faceset moved out of the listing (quarantine, occlusion apply's
# masked/thin, consolidate's merged): a re-export from the refine manifest cannot honour them
MOVED_OUT_SECTIONS = ("quarantined", "masked", "thin_eras", "merged")
ADDED_SECTION = "added"     # facesets added to a library (import-folders, discover, eras...)
SPLIT_SECTION = "split"     # facesets split into parts (split)
ADDED_DIR = "_added"        # SWAP_READY/_added/<tag>/faceset_NNN: built there, moved in
SPLIT_DIR = "_split"        # SWAP_READY/_split/faceset_NNN: a faceset split into parts


def read_label(faceset_dir: str | os.PathLike) -> str | None:
    """The person's name the operator wrote in a faceset's NAME.txt: its first line that is
    not a comment (None when there is none: export's template, no file, unreadable)."""
    try:
        text = (Path(faceset_dir) / NAME_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        line = " ".join(line.split())
        if line and not line.startswith("#"):
            return line[:LABEL_MAX]
    return None


def bundle_names(name: str, top_n: int) -> dict[str, str]:
    """File names of a faceset's two bundles (``name``: the faceset's bundle stem)."""
    return {"top": f"{name}_top{top_n}.fsz", "all": f"{name}_all.fsz"}


def curated_out(entry: dict) -> bool:
    """Whether a faceset's ``dropped[]`` entry is a face taken out after the export (by hand,
    by a maintenance run: drop-faces, occlusion, dedup-optimize, audit-multiface, a PNG
    deleted), not by an export gate: a re-export keeps it out."""
    return isinstance(entry.get("key"), str) and bool(entry["key"]) and (
        entry.get("reason") in (MULTIFACE_AUDIT, REVIEW_REASON, HAND_REMOVED_REASON)
        or "run" in entry or "moved_to" in entry)


def dropped_counts(dropped: list[dict]) -> dict[str, int]:
    """A faceset manifest's ``summary.dropped``: how many dropped faces per reason."""
    counts: dict[str, int] = {}
    for e in dropped:
        counts[str(e.get("reason"))] = counts.get(str(e.get("reason")), 0) + 1
    return counts


def bundle_stem(manifest: dict) -> str:
    """What a faceset's bundles are named after: its ``bundle_stem`` (a label, for facesets
    added from labelled folders) or else its name."""
    stem = manifest.get("bundle_stem")
    return stem if isinstance(stem, str) and BUNDLE_STEM.fullmatch(stem) else manifest["name"]


BUNDLE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
ADDED_BY_STEP = re.compile(r"[a-z][a-z0-9-]{0,39}")
LABEL_MAX = 200


def faceset_label(manifest: dict) -> str:
    """A faceset's ``label`` (the folder name it was imported from), one line of at most
    LABEL_MAX characters; "" when it has none or it is not a string."""
    label = manifest.get("label")
    if not isinstance(label, str):
        return ""
    return " ".join(label.split())[:LABEL_MAX]


def faceset_origin(manifest: dict) -> str:
    """What made a faceset, in words: "from refine NAME" for export-swap's, "added by STEP"
    (and the folder it read, where it says one) for a faceset import-folders, discover or
    eras added (its ``added_by``), "split from faceset_NNN" for a part split made; then
    "merged in faceset_NNN, ..." for the facesets consolidate merged into it (its
    ``history``); "" when nothing is known. Untrusted: a malformed ``added_by`` reads as
    "added by another step", a name that is not a faceset name is left out."""
    merged = [n for h in manifest.get("history") or [] if isinstance(h, dict)
              and h.get("step") == "consolidate" and isinstance(h.get("merged"), list)
              for n in h["merged"] if isinstance(n, str) and FACESET_NAME.fullmatch(n)]
    origin = _made_by(manifest)
    if merged:
        origin += (" · " if origin else "") + "merged in " + ", ".join(merged)
    return origin


def _made_by(manifest: dict) -> str:
    added = manifest.get("added_by")
    if added is not None:
        step = added.get("step") if isinstance(added, dict) else None
        if not isinstance(step, str) or not ADDED_BY_STEP.fullmatch(step):
            return "added by another step"
        source = added.get("source") if isinstance(added.get("source"), dict) else {}
        folder = source.get("folder")
        name = folder.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] \
            if isinstance(folder, str) else ""
        if name.strip():     # the folder's own name: the path is in the added[] record
            return f"added by {step} from {' '.join(name.split())[:LABEL_MAX]}"
        return f"added by {step}"
    split_from = manifest.get("split_from")
    if isinstance(split_from, str) and FACESET_NAME.fullmatch(split_from):
        return f"split from {split_from}"
    source = manifest.get("source_faceset")
    return f"from refine {source}" if isinstance(source, str) and source else ""


def label_stem(label: str) -> str | None:
    """A bundle stem for a label (a folder name): its letters, digits, ``._-`` (others
    become ``_``); None when nothing usable is left."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[:80]
    return stem if stem and BUNDLE_STEM.fullmatch(stem) else None


def write_bundles(faceset_dir: Path, manifest: dict) -> None:
    """(Re)write both bundles from ``manifest['faces']`` (rank order), removing stale ones."""
    faceset_dir = Path(faceset_dir)
    top_n = int(manifest["top_n"])
    stem = bundle_stem(manifest)
    names = bundle_names(stem, top_n)
    pngs = [safe_member_path(faceset_dir, f["file"], "faces[].file")
            for f in sorted(manifest["faces"], key=lambda f: f["rank"])]
    write_fsz(pngs[:top_n], faceset_dir / names["top"])
    write_fsz(pngs, faceset_dir / names["all"])
    for stale in faceset_dir.glob(f"{stem}_*.fsz"):
        if stale.name not in names.values() and BUNDLE_FILE.fullmatch(stale.name):
            stale.unlink()
    manifest["bundles"] = {"top": names["top"], "top_count": min(top_n, len(pngs)),
                           "all": names["all"], "all_count": len(pngs)}


# what atomic_write leaves behind when a kill interrupts a bundle or manifest write
BUNDLE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*_(top[0-9]+|all)\.fsz")

FACESET_FILES = re.compile(
    rf"{BUNDLE_FILE.pattern}|{re.escape(MANIFEST_NAME)}|{re.escape(NAME_FILE)}")


def remove_faceset_temps(faceset_dir: Path) -> None:
    """Remove the temp files of writes a kill interrupted in a faceset folder (its
    manifest, bundles, NAME.txt, and the contact sheet in previews/)."""
    remove_temp_files(faceset_dir, FACESET_FILES)
    preview = Path(PREVIEW)
    remove_temp_files(Path(faceset_dir) / preview.parent, re.compile(re.escape(preview.name)))


def preview_bytes(pngs: list[Path], thumb: int = 128, columns: int = 6) -> bytes:
    """previews/top_grid.jpg's bytes: the crops as a grid of thumbnails, rank order."""
    import cv2  # here, not at module import: `--help` loads no OpenCV
    import numpy as np
    rows = max(1, -(-len(pngs) // columns))
    sheet = np.full((rows * thumb, columns * thumb, 3), 32, dtype=np.uint8)
    for k, png in enumerate(pngs):
        img = cv2.imread(str(png))
        if img is None:
            continue
        r, c = divmod(k, columns)
        sheet[r * thumb:(r + 1) * thumb, c * thumb:(c + 1) * thumb] = cv2.resize(
            img, (thumb, thumb), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise OSError("could not encode the preview")
    return buf.tobytes()


def preview_faces(manifest: dict | None) -> list[tuple[str, str]] | None:
    """What a faceset's grid shows, as (file, key) of its top_n faces in rank order (None
    for no manifest): two manifests with equal lists draw the same grid."""
    if manifest is None:
        return None
    faces = sorted(manifest["faces"], key=lambda f: f["rank"])[:int(manifest["top_n"])]
    return [(f["file"], f["key"]) for f in faces]


def write_previews(faceset_dir: str | os.PathLike, manifest: dict) -> None:
    """previews/top_grid.jpg as ``manifest`` (validated) says the faceset is now: its top_n
    kept faces in rank order. Called wherever a faceset's faces change after export: every
    recorded run after it installs a faceset manifest (core/runs.execute: drop-faces,
    move-face, occlusion apply, dedup-optimize, consolidate, the review page, undo...) and
    ``rebuild_bundles`` (audit-multiface apply, hand edits), so the grid shows the faces the
    faceset holds. The same manifest and PNGs give the same bytes: an unchanged grid is not
    rewritten, an undo draws the old grid again. A face whose PNG is missing is left out."""
    fdir = Path(faceset_dir)
    faces = sorted(manifest["faces"], key=lambda f: f["rank"])
    pngs = [safe_member_path(fdir, f["file"], "faces[].file", fdir / MANIFEST_NAME)
            for f in faces]
    pngs = [p for p in pngs if p.is_file()][:int(manifest["top_n"])]
    # drawing costs ~0.5 s a faceset (30 PNGs decoded): callers skip it when
    # preview_faces says the grid's faces are the same
    dest = fdir / PREVIEW
    try:
        data = preview_bytes(pngs)
    except OSError:
        raise OSError(f"{dest}: could not encode the preview") from None
    try:
        if dest.is_file() and not dest.is_symlink() and dest.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(dest, data, root=fdir)   # FACESET/previews/: never through a symlink


def rebuild_bundles(faceset_dir: str | os.PathLike, step: str = "rebuild_bundles",
                    run: str | None = None, details: dict[str, dict] | None = None,
                    reason: str = HAND_REMOVED_REASON,
                    finish: Callable[[dict], dict] | None = None) -> dict:
    """Rebuild a faceset's ``.fsz`` bundles from the PNGs still in its faces/ folder.

    Faces whose PNG is gone (moved to ``faces/_dropped/`` by an audit, deleted by hand) leave
    ``faces[]`` for ``dropped[]``, with ``details[file]`` (reason and what the step found)
    or else ``reason``, and ``audit_run`` = ``run``; the rest keep their rank and file name,
    and the bundles hold them in rank order. The bundles are written first, the manifest
    (with a ``history`` entry naming ``run``) last, so a kill in between is redone by the
    next call. ``finish``: what the caller adds once the faces are known (the cohesion
    figure, core/cohesion.with_cohesion). Returns the new manifest.
    """
    faceset_dir = Path(faceset_dir)
    details = details or {}
    manifest = load_manifest(faceset_dir / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
    kept, gone = [], []
    for face in sorted(manifest["faces"], key=lambda f: f["rank"]):
        (kept if (faceset_dir / face["file"]).is_file() else gone).append(face)
    for face in gone:
        entry = dict(face, reason=reason)
        entry.update(details.get(face["file"], {}))
        if run is not None:
            entry["audit_run"] = run
        manifest["dropped"].append(entry)
    manifest["faces"] = kept
    write_bundles(faceset_dir, manifest)
    summary = manifest["summary"]
    summary["kept"] = len(kept)
    counts = summary.get("dropped") if isinstance(summary.get("dropped"), dict) else {}
    for entry in manifest["dropped"][len(manifest["dropped"]) - len(gone):]:
        counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
    summary["dropped"] = counts
    manifest.setdefault("history", []).append(
        {"step": step, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": run,
         "removed": [f["key"] for f in gone], "kept": len(kept)})
    if finish is not None:
        manifest = finish(manifest)
    write_previews(faceset_dir, manifest)
    write_manifest(faceset_dir / MANIFEST_NAME, manifest)
    return manifest


# ---- bodies: export-swap writes them; maintenance steps change them -----------------------
def faceset_manifest(head: dict, name: str, source_faceset: str, run: str, top_n: int,
                     centroid, faces: list[dict], dropped: list[dict], faces_in: int,
                     kept_audit_drops: list[str]) -> dict:
    """OUT/faceset_NNN/manifest.json as export-swap writes it (``write_bundles`` adds its
    ``bundles``); ``kept_audit_drops``: keys of faces an earlier audit dropped, kept dropped
    (recorded in ``history``)."""
    history = [{"step": "export-swap", "when": head["created"], "run": run,
                "kept_audit_drops": kept_audit_drops}] if kept_audit_drops else []
    counts = dropped_counts(dropped)
    return dict(head, name=name, source_faceset=source_faceset, run=run, top_n=top_n,
                centroid=[round(float(v), 6) for v in centroid], faces=faces,
                dropped_version=DROPPED_VERSION, dropped=dropped,
                history=history,
                summary={"faces_in": faces_in, "kept": len(faces), "dropped": counts})


def cohesion_entry(split: float, faces: int, threshold: float | None, mixed: bool) -> dict:
    """A faceset manifest's ``cohesion``: the split distance of its kept faces
    (core/cohesion.py), how many faces it was measured on, the cluster threshold it is
    compared with (null when none is known) and ``likely_mixed``: the verdict of the rule
    (split >= core/cohesion.FACESET_MIXED_RATIO x threshold) when it was measured."""
    return {"version": COHESION_VERSION, "split": round(float(split), 4), "faces": int(faces),
            "threshold": None if threshold is None else round(float(threshold), 4),
            "likely_mixed": bool(mixed)}


def candidates_manifest(head: dict, run: str, candidates: dict) -> dict:
    """OUT/_candidates/manifest.json: the review folders of ``--candidates``."""
    return dict(head, format=SWAP_MANIFEST, run=run, candidates=candidates)


def swap_manifest(head: dict, run: str, refine_manifest: str, listing: list[dict],
                  candidates: dict, sections: dict[str, list], faces_in: int,
                  dropped: dict[str, int], crops: int, decoded: int, seconds: float,
                  settings: dict | None = None) -> dict:
    """OUT/manifest.json as export-swap writes it: every faceset's listing, the candidates,
    the maintenance ``sections`` (kept from the previous export) and the library's
    ``settings`` (``settings_section``; omitted when None)."""
    top = dict(head, format=SWAP_MANIFEST, run=run, refine_manifest=refine_manifest)
    if settings is not None:
        top[SETTINGS_SECTION] = settings
    top["summary"] = {
        "facesets": len(listing), "faces_in": faces_in,
        "faces_kept": sum(e["faces"] for e in listing), "dropped": dropped,
        "crops": crops, "sources_decoded": decoded,
        "candidates_to": sum(len(v) for v in candidates["to"].values()),
        "candidates_new": len(candidates["new"]),
        "seconds": seconds}
    top["facesets"] = listing
    top["candidates"] = candidates
    for k in MAINTENANCE_SECTIONS:
        top[k] = sections.get(k, [])
    for k, v in sections.items():      # runs[], occlusion_filter_run, ...: the history stays
        top.setdefault(k, v)
    return top


# ---- the library's settings (docs/manifest-format.md, "Library settings") ----------------
SETTINGS_SECTION = "settings"
SETTINGS_VERSION = 1
# the gates a library records: refine's (who is in a faceset) and export-swap's (which faces
# make a crop); their defaults live in the steps' Params (core/settings.py reads them there)
SETTINGS_GATES = {"min_short": float, "min_blur": float, "min_det_score": float,
                  "min_faces": int, "min_face_short": float, "out_size": int,
                  "pad_ratio": float, "top_n": int, "candidate_min_score": float}
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def settings_section(model: str | None, pack_dir: str | None, gates: dict,
                     thresholds: dict, sources: dict[str, str]) -> dict:
    """The top-level manifest's ``settings``: what the library was built with (the model and
    the folder its pack was loaded from, the gates, the thresholds) and where each value
    came from (``sources``: name -> "flag", "library", "default", "calibrated"...)."""
    return {"version": SETTINGS_VERSION, "model": model, "pack_dir": pack_dir,
            "gates": {k: SETTINGS_GATES[k](v) for k, v in gates.items()},
            "thresholds": {k: round(float(v), 6) for k, v in thresholds.items()},
            "sources": dict(sources)}


def read_settings(top: dict, path: str | os.PathLike) -> dict | None:
    """The validated ``settings`` of a top-level manifest read from ``path`` (None when it
    has none: a library exported before face-sets recorded them). A wrong field raises
    ManifestError naming ``path`` and the field."""
    s = top.get(SETTINGS_SECTION)
    if s is None:
        return None

    def bad(field: str, what: str):
        return ManifestError(f"{path}: {SETTINGS_SECTION}.{field} {what}; restore the file, "
                             "or re-run export-swap (it writes the settings again)")

    if not isinstance(s, dict):
        raise bad("", "is not an object")
    v = s.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise bad("version", f"{v!r} is not a version number")
    if v > SETTINGS_VERSION:
        raise bad("version", f"{v} is newer than this face-sets reads; upgrade face-sets")
    for field in ("model", "pack_dir"):
        if s.get(field) is not None and (not isinstance(s[field], str) or not s[field]
                                         or "\x00" in s[field]):
            raise bad(field, f"{s[field]!r} is not a name")
    out = {"version": v, "model": s.get("model"), "pack_dir": s.get("pack_dir"),
           "gates": {}, "thresholds": {}, "sources": {}}
    for section, limit in (("gates", None), ("thresholds", 2.0)):
        values = s.get(section, {})
        if not isinstance(values, dict):
            raise bad(section, "is not an object")
        for name, value in values.items():
            field = f"{section}.{name}"
            if not _SETTING_NAME.fullmatch(str(name)) or (section == "gates"
                                                          and name not in SETTINGS_GATES):
                raise bad(field, "is not a setting face-sets knows")
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value) or value < 0 \
                    or (limit is not None and value > limit):
                raise bad(field, f"{value!r} is not a number in range"
                          + (f" (0-{limit})" if limit else " (>= 0)"))
            if section == "gates" and SETTINGS_GATES[name] is int and value != int(value):
                raise bad(field, f"{value!r} is not a whole number")
            out[section][name] = SETTINGS_GATES[name](value) if section == "gates" \
                else float(value)
    sources = s.get("sources", {})
    if not isinstance(sources, dict) or not all(
            isinstance(k, str) and isinstance(x, str) and len(x) < 200
            for k, x in sources.items()):
        raise bad("sources", "is not an object of names to words")
    out["sources"] = dict(sources)
    return out


# the sources of a setting that make it the library's own choice: kept by every operation
# (an operation's flag fills a gap; only export-swap, which rebuilds, replaces a choice)
CHOSEN_SOURCES = ("flag", "library")


def with_chosen_settings(top: dict, choices: dict[str, float],
                         path: str | os.PathLike) -> None:
    """Record in the top-level manifest ``top`` (read from ``path``) the settings a command
    took from its flags where the library has not chosen its own: ``choices``
    ("gate:NAME" / "threshold:NAME" -> value) fill its gaps (a setting it lacks, or holds
    only from a default, the model or the cache) as source "flag", so the next command uses
    them without the flags. A setting the library chose stays (a one-off override is the
    run's, said in its summary and kept in the new facesets' parameters). A value the
    section cannot hold (a gate it does not know, a threshold outside 0-2, not a finite
    number) is not recorded."""
    have = read_settings(top, path) or {"model": top.get("model") if isinstance(
        top.get("model"), str) else None, "pack_dir": None, "gates": {}, "thresholds": {},
        "sources": {}}
    gates, thresholds, sources = dict(have["gates"]), dict(have["thresholds"]), \
        dict(have["sources"])
    for key, value in choices.items():
        kind, _, name = key.partition(":")
        held = name in (gates if kind == "gate" else thresholds)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value) or value < 0 \
                or (held and sources.get(key, "library") in CHOSEN_SOURCES):
            continue   # (a value recorded with no source is the library's own)
        if kind == "gate" and name in SETTINGS_GATES \
                and (SETTINGS_GATES[name] is not int or value == int(value)):
            gates[name] = value
        elif kind == "threshold" and _SETTING_NAME.fullmatch(name) and value <= 2.0:
            thresholds[name] = value
        else:
            continue
        sources[key] = "flag"
    top[SETTINGS_SECTION] = settings_section(have["model"], have["pack_dir"], gates,
                                             thresholds, sources)


# what export-swap writes itself in the top-level manifest (besides the common head)
EXPORT_OWN_KEYS = ("run", "refine_manifest", SETTINGS_SECTION, "summary", "facesets",
                   "candidates")


def maintenance_sections(out: str | os.PathLike, head: dict) -> dict:
    """What a re-export keeps of the top-level manifest in ``out``: every key but the common
    ``head`` and what the export writes itself (EXPORT_OWN_KEYS): the maintenance sections,
    ``runs[]``, ``occlusion_filter_run``... ({} when there is none). An unreadable one raises
    ManifestError: rewriting it would lose the folder's history."""
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        return {}
    prev = load_manifest(path, SWAP_MANIFEST)
    return {k: v for k, v in prev.items() if k not in head and k not in EXPORT_OWN_KEYS}


def multiface_audit_record(run: str, step: str, queue: str, results: str, checked: int,
                           dropped: dict[str, int], unreadable: int, unchecked: int,
                           changed: int) -> dict:
    """An audit-multiface run's entry in the top-level manifest's ``multiface_audit[]``;
    ``dropped``: PNGs dropped per faceset."""
    return {
        "run": run, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
        "why": "face PNG did not show exactly one face on re-detection (0 or 2+); moved to "
               "<faceset>/faces/_dropped/",
        "queue": queue, "results": results, "checked": checked,
        "dropped": sum(dropped.values()), "by_faceset": {k: v for k, v in dropped.items() if v},
        "unreadable": unreadable, "unchecked": unchecked, "changed_since_staging": changed}


def faceset_listing(manifest: dict) -> dict:
    """A faceset's entry in the top-level manifest's ``facesets[]``."""
    b = manifest.get("bundles", {})
    return {"name": manifest["name"], "folder": manifest["name"],
            "source_faceset": manifest.get("source_faceset", ""),
            "faces": len(manifest["faces"]), "dropped": len(manifest["dropped"]),
            "top_bundle": f"{manifest['name']}/{b.get('top', '')}",
            "all_bundle": f"{manifest['name']}/{b.get('all', '')}",
            "manifest": f"{manifest['name']}/{MANIFEST_NAME}"}


def refresh_listing(out: str | os.PathLike, names: list[str],
                    update: Callable[[dict], None] | None = None) -> dict:
    """Update the entries of faceset ``names`` in OUT/manifest.json from their own manifests,
    let ``update`` add a maintenance step's provenance, and write it (atomically, once).
    """
    out = Path(out)
    top = load_manifest(out / MANIFEST_NAME, SWAP_MANIFEST)
    fresh = {name: faceset_listing(load_manifest(out / name / MANIFEST_NAME,
                                                 SWAP_FACESET_MANIFEST)) for name in names}
    top["facesets"] = [fresh.get(e["name"], e) for e in top.get("facesets", [])]
    if update is not None:
        update(top)
    write_manifest(out / MANIFEST_NAME, top)
    return top


# ---- helpers for the identity operations (consolidate, dedup-optimize...) ---------------
def drop_destination(fdir: Path, rel: str, taken: set[str]) -> str:
    """faces/_dropped/<name>, or <stem>.N.png when that name is taken (never overwrite);
    ``taken``: destinations already chosen in this plan (updated)."""
    name = Path(rel).name
    dest, n = f"{FACES_DIR}/{DROPPED_DIR}/{name}", 1
    while str(fdir / dest) in taken or (fdir / dest).exists():
        dest = f"{FACES_DIR}/{DROPPED_DIR}/{Path(name).stem}.{n}.png"
        n += 1
    taken.add(str(fdir / dest))
    return dest


def next_face_number(manifest: dict, fdir: Path) -> int:
    """The first faces/NNN.png number past every face a manifest names and every PNG in
    faces/ (a face moved in never takes a name in use)."""
    used = [int(Path(f["file"]).stem) for f in manifest["faces"]]
    used += [int(p.stem) for p in (Path(fdir) / FACES_DIR).glob("*.png") if p.stem.isdigit()]
    return max(used, default=-1) + 1


def bundles_entry(name: str, top_n: int, count: int) -> dict:
    """A faceset manifest's ``bundles`` as ``write_bundles`` sets it for ``count`` faces
    (a plan can list the faceset before its bundles are written)."""
    names = bundle_names(name, top_n)
    return {"top": names["top"], "top_count": min(top_n, count), "all": names["all"],
            "all_count": count}
