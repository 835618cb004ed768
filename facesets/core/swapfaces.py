"""The face PNGs of a swap-ready export, as the queue-staging steps (audit-multiface,
occlusion) list them: every face a faceset manifest names whose PNG is on disk, with its
size and sha256 (so a result never applies to a file that changed since)."""
from __future__ import annotations

import os
from pathlib import Path

from ..formats.manifest import (FACE_PNG, FACESET_NAME, SWAP_FACESET_MANIFEST, SWAP_MANIFEST,
                                ManifestError, load_manifest, safe_member_path)
from ..formats.swapset import MANIFEST_NAME
from ..io.fsutil import sha256_file


def faceset_name(name, out: Path, source: str | os.PathLike | None = None) -> str:
    """A faceset folder named by a manifest or queue: faceset_NNN, a folder of OUT."""
    if not isinstance(name, str) or not FACESET_NAME.fullmatch(name) \
            or not (out / name).is_dir():
        raise ManifestError(f"{source or out}: faceset {name!r} is not a folder of this "
                            "export; re-run export-swap or re-stage the queue")
    return name


def face_file(rel, faceset_dir: Path, source: str | os.PathLike | None = None) -> str:
    """A face PNG named by a manifest or queue: faces/NNN.png inside that faceset."""
    if not isinstance(rel, str) or not FACE_PNG.fullmatch(rel):
        raise ManifestError(f"{source or faceset_dir}: face file {rel!r} is not "
                            "faces/NNN.png; re-run export-swap or re-stage the queue")
    safe_member_path(faceset_dir, rel, "file", source)
    return rel


def face_png_items(out: Path) -> tuple[dict, list[dict]]:
    """The export's top-level manifest and one queue item per face PNG on disk:
    ``{id: faceset/faces/NNN.png, path, faceset, file, key, size, sha256}``."""
    out = Path(out)
    top = load_manifest(out / MANIFEST_NAME, SWAP_MANIFEST)
    items = []
    for entry in top.get("facesets", []):
        name = faceset_name(entry.get("name"), out)
        fs = load_manifest(out / name / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        for face in fs.get("faces", []):
            rel = face_file(face.get("file"), out / name)
            png = out / name / rel
            if not png.is_file():
                continue  # already moved away: the apply step rebuilds the bundles
            items.append({"id": f"{name}/{rel}", "path": str(png), "faceset": name,
                          "file": rel, "key": face.get("key", ""),
                          "size": png.stat().st_size, "sha256": sha256_file(png)})
    return top, items
