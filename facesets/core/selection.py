"""The faces a grouping step works on (cluster, refine, dedup, extend, export, calibrate):
the cached faces whose photo still has a location, unit embeddings, keys, and manifest face
entries. Shared by every step that groups or lists faces.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import normalize_rows, pairs_from_groups
from ..formats.cache import FaceCache
from ..formats.manifest import face_entry


@dataclass
class FaceSelection:
    """The cached faces that take part in grouping, with what every step needs of them."""

    rows: np.ndarray          # row of each selected face in cache.faces
    embeddings: np.ndarray    # unit-normalised, float32
    keys: np.ndarray          # "sha256:index"
    sha256: np.ndarray
    locations: dict           # sha256 -> [canonical path, aliases...]

    def __len__(self) -> int:
        return len(self.rows)

    def cannot_link(self, subset: np.ndarray | None = None) -> np.ndarray:
        """Pairs of faces from one photo (within ``subset`` rows of this selection)."""
        sha = self.sha256 if subset is None else self.sha256[subset]
        _, groups = np.unique(sha, return_inverse=True)
        return pairs_from_groups(groups.reshape(-1))


def select_faces(cache: FaceCache) -> FaceSelection:
    """Faces whose photo still has a recorded location (moved-away content is left out)."""
    locations = cache.locations()
    sha = cache.faces["sha256"]
    keep = np.fromiter((s in locations for s in sha.tolist()), dtype=bool, count=len(sha))
    rows = np.flatnonzero(keep)
    return FaceSelection(rows=rows,
                         embeddings=normalize_rows(cache.faces["embedding"][rows]),
                         keys=cache.face_keys()[rows], sha256=sha[rows], locations=locations)


def entry_for(cache: FaceCache, sel: FaceSelection, i: int,
              placed: list[str] | None = None) -> dict:
    """Manifest face entry of selected face ``i``."""
    r = sel.rows[i]
    f = cache.faces
    return face_entry(str(sel.keys[i]), str(sel.sha256[i]), sel.locations.get(sel.sha256[i], []),
                      f["bbox"][r], f["det_score"][r], f["face_short"][r], f["blur"][r], placed)


def groups_by_label(labels: np.ndarray) -> list[np.ndarray]:
    """Member indices of each label 0..K-1."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0, True])
    return [order[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)]


def subset(sel: FaceSelection, idx: np.ndarray) -> FaceSelection:
    """The faces ``idx`` of a selection, as a selection of their own."""
    return FaceSelection(rows=sel.rows[idx], embeddings=sel.embeddings[idx], keys=sel.keys[idx],
                         sha256=sel.sha256[idx], locations=sel.locations)
