"""``export-swap``: swap-ready facesets (ranked single-face PNG crops + ``.fsz`` bundles).

Layout of OUT (docs/manifest-format.md, "Swap-ready export"):
  OUT/faceset_NNN/faces/000.png ...        crops, named by rank (000 best)
  OUT/faceset_NNN/faceset_NNN_top{N}.fsz   the N best, as 0.png, 1.png, ...
  OUT/faceset_NNN/faceset_NNN_all.fsz      every kept crop, in rank order
  OUT/faceset_NNN/manifest.json            kept faces (+ quality), dropped faces (+ reason)
  OUT/faceset_NNN/NAME.txt                 for the operator (kept across re-runs)
  OUT/faceset_NNN/previews/top_grid.jpg    contact sheet of the top crops
  OUT/_candidates/to_faceset_NNN/, new_NNN/ (with --candidates)
  OUT/manifest.json                        every faceset; written last
Every faceset is built in a staging folder and swapped in whole (fsutil.replace_dir).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .bundle import write_fsz
from .fsutil import atomic_write_json
from .manifest import (SWAP_FACESET_MANIFEST, SWAP_MANIFEST, load_manifest, write_manifest)

FACES_DIR = "faces"
PREVIEW = "previews/top_grid.jpg"
NAME_FILE = "NAME.txt"
MANIFEST_NAME = "manifest.json"
CANDIDATES_DIR = "_candidates"
# sections of the top-level manifest that maintenance steps fill; export-swap keeps them
MAINTENANCE_SECTIONS = ("masked", "thin_eras", "merged")


def bundle_names(name: str, top_n: int) -> dict[str, str]:
    """File names of a faceset's two bundles."""
    return {"top": f"{name}_top{top_n}.fsz", "all": f"{name}_all.fsz"}


def write_bundles(faceset_dir: Path, manifest: dict) -> None:
    """(Re)write both bundles from ``manifest['faces']`` (rank order), removing stale ones."""
    faceset_dir = Path(faceset_dir)
    top_n = int(manifest["top_n"])
    names = bundle_names(manifest["name"], top_n)
    pngs = [faceset_dir / f["file"] for f in sorted(manifest["faces"], key=lambda f: f["rank"])]
    write_fsz(pngs[:top_n], faceset_dir / names["top"])
    write_fsz(pngs, faceset_dir / names["all"])
    for stale in faceset_dir.glob(f"{manifest['name']}_*.fsz"):
        if stale.name not in names.values():
            stale.unlink()
    manifest["bundles"] = {"top": names["top"], "top_count": min(top_n, len(pngs)),
                           "all": names["all"], "all_count": len(pngs)}


def rebuild_bundles(faceset_dir: str | os.PathLike, reason: str = "removed from faces/",
                    step: str = "rebuild_bundles") -> dict:
    """Rebuild a faceset's ``.fsz`` bundles from the PNGs still in its faces/ folder.

    Faces whose PNG is gone (moved to ``faces/_dropped/`` by an audit, deleted by hand) leave
    ``faces[]`` for ``dropped[]`` with ``reason``; the rest keep their rank and file name,
    and the bundles hold them in rank order. The manifest is rewritten atomically with a
    ``history`` entry. Returns the new manifest. Running it twice changes nothing more.
    """
    faceset_dir = Path(faceset_dir)
    manifest = load_manifest(faceset_dir / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
    kept, gone = [], []
    for face in sorted(manifest["faces"], key=lambda f: f["rank"]):
        (kept if (faceset_dir / face["file"]).is_file() else gone).append(face)
    for face in gone:
        manifest["dropped"].append(dict(face, reason=reason))
    manifest["faces"] = kept
    write_bundles(faceset_dir, manifest)
    manifest["summary"]["kept"] = len(kept)
    if gone:
        dropped = manifest["summary"].setdefault("dropped", {})
        dropped[reason] = dropped.get(reason, 0) + len(gone)
    manifest.setdefault("history", []).append(
        {"step": step, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "removed": [f["key"] for f in gone], "reason": reason if gone else "",
         "kept": len(kept)})
    write_manifest(faceset_dir / MANIFEST_NAME, manifest)
    return manifest


def faceset_listing(manifest: dict) -> dict:
    """A faceset's entry in the top-level manifest's ``facesets[]``."""
    b = manifest.get("bundles", {})
    return {"name": manifest["name"], "folder": manifest["name"],
            "source_faceset": manifest.get("source_faceset", ""),
            "faces": len(manifest["faces"]), "dropped": len(manifest["dropped"]),
            "top_bundle": f"{manifest['name']}/{b.get('top', '')}",
            "all_bundle": f"{manifest['name']}/{b.get('all', '')}",
            "manifest": f"{manifest['name']}/{MANIFEST_NAME}"}


def refresh_listing(out: str | os.PathLike, faceset_name: str) -> dict:
    """Update one faceset's entry in OUT/manifest.json from its own manifest (atomically).

    For maintenance steps that changed a faceset (e.g. an audit that rebuilt its bundles);
    they add their own provenance sections beside ``facesets[]``.
    """
    out = Path(out)
    top = load_manifest(out / MANIFEST_NAME, SWAP_MANIFEST)
    fs = load_manifest(out / faceset_name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
    top["facesets"] = [faceset_listing(fs) if e["name"] == faceset_name else e
                       for e in top["facesets"]]
    atomic_write_json(out / MANIFEST_NAME, top)
    return top
