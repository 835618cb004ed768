"""The typed library, first piece: ``Faceset``, one faceset folder of a swap-ready library.

A ``Faceset`` is loaded (and validated) through formats/swapset.py's reader, knows its
bundle names (``bundle_stem``: the one naming rule of every command) and its faces and
dropped faces, and its operations return NEW manifest bodies (the loaded body is never
changed), so a recorded run (core/runs.py) can keep the previous bytes and install the new
ones. Steps use it instead of editing manifest dicts by hand.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

from .cohesion import with_cohesion
from ..formats.manifest import FACESET_NAME, SWAP_FACESET_MANIFEST, load_manifest
from ..formats.swapset import (MANIFEST_NAME, bundle_names, bundle_stem, bundles_entry,
                               dropped_counts, faceset_listing)


@dataclass(frozen=True)
class Faceset:
    """A faceset folder and its validated manifest (``body``; treat it as read-only)."""

    folder: Path
    body: dict

    @classmethod
    def load(cls, folder: str | Path) -> "Faceset":
        """Read ``folder/manifest.json`` (ManifestError naming the file and field)."""
        folder = Path(folder)
        return cls(folder, load_manifest(folder / MANIFEST_NAME, SWAP_FACESET_MANIFEST))

    @classmethod
    def of(cls, body: dict, folder: str | Path = ".") -> "Faceset":
        """A faceset from a body in hand (a plan's new manifest)."""
        return cls(Path(folder), body)

    @property
    def name(self) -> str:
        return self.body["name"]

    @property
    def faces(self) -> list[dict]:
        """Kept faces, in rank order."""
        return sorted(self.body["faces"], key=lambda f: f["rank"])

    @property
    def dropped(self) -> list[dict]:
        return list(self.body["dropped"])

    @property
    def bundle_stem(self) -> str:
        return bundle_stem(self.body)

    def bundle_names(self) -> dict[str, str]:
        """{"top": ..., "all": ...}: the bundle files, named by the one rule."""
        return bundle_names(self.bundle_stem, int(self.body["top_n"]))

    def listing(self) -> dict:
        """This faceset's entry in the top-level manifest's ``facesets[]``."""
        return faceset_listing(self.body)

    # ---- operations: each returns a new body -------------------------------------------
    def finished(self, body: dict) -> dict:
        """``body`` with its counts and bundle entry brought in line with its faces."""
        body["summary"]["dropped"] = dropped_counts(body["dropped"])
        body["summary"]["kept"] = len(body["faces"])
        body["bundles"] = bundles_entry(bundle_stem(body), int(body["top_n"]),
                                        len(body["faces"]))
        return with_cohesion(body)

    def dropping(self, files: dict[str, str | None], reason: str, run: str,
                 extra: dict[str, dict] | None = None) -> dict:
        """A new body with the faces ``files`` (faces/NNN.png -> where the PNG is parked,
        or None) moved from ``faces[]`` to ``dropped[]`` with ``reason`` (the gate) and
        ``run``; ``extra[file]``: fields added to that face's dropped entry."""
        extra = extra or {}
        new = copy.deepcopy(self.body)
        new["faces"] = [f for f in new["faces"] if f["file"] not in files]
        for face in self.faces:
            if face["file"] in files:
                entry = dict(face, reason=reason, run=run, **extra.get(face["file"], {}))
                if files[face["file"]]:
                    entry["moved_to"] = files[face["file"]]
                new["dropped"].append(entry)
        return self.finished(new)

    def without(self, files: set[str]) -> dict:
        """A new body without the faces ``files`` (moved to another faceset: not dropped;
        the others keep their rank)."""
        new = copy.deepcopy(self.body)
        new["faces"] = [f for f in new["faces"] if f["file"] not in files]
        return self.finished(new)

    def adding(self, faces: list[dict]) -> dict:
        """A new body with ``faces`` (entries with their new ``file``) added and every face
        re-ranked by score."""
        new = copy.deepcopy(self.body)
        new["faces"] = new["faces"] + copy.deepcopy(faces)
        return self.finished(reranked(new))

    def history(self, body: dict, entry: dict) -> dict:
        """``body`` with ``entry`` appended to its ``history[]``."""
        body.setdefault("history", []).append(entry)
        return body


def reranked(body: dict) -> dict:
    """``body`` with its faces re-ranked by score, best first (ties keep their order)."""
    body["faces"].sort(key=lambda f: -float(f.get("score") or 0.0))
    for rank, face in enumerate(body["faces"]):
        face["rank"] = rank
    return body


def is_faceset_name(name) -> bool:
    return isinstance(name, str) and bool(FACESET_NAME.fullmatch(name))


# ---- nothing dropped silently ----------------------------------------------------------------
LOSS_SHARE = 0.2   # a step that drops more than this share of an identity's faces says so


def heavy_loss(step: str, name: str, faces_in: int, dropped: list[dict],
               flags: dict[str, str]) -> str | None:
    """One summary line when the gates of ``step`` (drop reason -> the flag that sets it)
    took more than LOSS_SHARE of identity ``name``'s ``faces_in`` faces, naming per gate
    how many and the flag value that would keep them all (``dropped``: entries with
    ``reason``, ``value``, ``limit``); None otherwise."""
    lost = [e for e in dropped if e.get("reason") in flags]
    if not faces_in or len(lost) <= LOSS_SHARE * faces_in:
        return None
    parts, keep = [], []
    for gate, flag in flags.items():
        hit = [e for e in lost if e["reason"] == gate]
        if not hit:
            continue
        parts.append(f"{gate} {len(hit)}")
        values = [e["value"] for e in hit if isinstance(e.get("value"), (int, float))]
        limit = hit[0].get("limit")
        if values and isinstance(limit, (int, float)):
            # a face over an upper limit (outlier distance) needs the limit raised past
            # the largest value; a face under a lower limit (size, blur) lowered below it
            up = max(values) > limit
            want = math.ceil(max(values) * 1e4) / 1e4 if up else \
                math.floor(min(values) * 1e4) / 1e4
            keep.append(f"{flag} {want:g} or {'more' if up else 'less'} (now {limit:g})")
        else:
            keep.append(flag)
    return (f"{step}: {name} lost {len(lost)} of {faces_in} faces "
            f"({len(lost) / faces_in:.0%}) to its gates ({', '.join(parts)}); to keep them: "
            f"{', '.join(keep)}")
