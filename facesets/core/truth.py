"""Ground truth from hand-sorted folders: TRUTH_ROOT/<person>/... (one folder per person).

Files are matched to cache records by content (sha256), so copies anywhere count. A truth
photo shows its person, but may show others too: of a photo with several faces only the face
nearest the image centre is scored (``TruthSet.ambiguous`` counts those photos). The same
content filed under two people is left out (``conflicts``).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..formats.cache import FaceCache
from ..io.fsutil import sha256_file
from ..sources.folder import FolderSource


@dataclass
class TruthSet:
    """Truth faces: a cache face row and a person index each."""

    rows: np.ndarray          # rows in cache.faces
    labels: np.ndarray        # person index (into ``people``) of each row
    people: list[str]
    images: int = 0           # image files under TRUTH_ROOT's person folders
    not_in_cache: int = 0     # content never embedded into this cache
    no_face: int = 0          # embedded, no face found
    ambiguous: int = 0        # several faces: only the one nearest the centre is scored
    conflicts: int = 0        # same content under two people: left out

    def line(self) -> str:
        return (f"truth: {len(self.people)} people, {self.images} images, {len(self.rows)} "
                f"faces scored; {self.ambiguous} images with several faces (only the face "
                f"nearest the centre scored), {self.not_in_cache} not in the cache, "
                f"{self.no_face} without a face, {self.conflicts} filed under two people "
                "(left out)")


def _hash_all(paths: list[str], cache: FaceCache, workers: int = 2) -> list[str]:
    """sha256 of each path; unchanged paths (same size and mtime) take the cached hash."""
    index = cache.path_index()

    def one(p: str) -> str:
        try:
            st = os.stat(p)
            rec = index.get(p)
            if rec and rec[2] and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
                return rec[2]
            return sha256_file(p)
        except OSError:
            return ""

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def centre_face(cache: FaceCache, face_rows: np.ndarray, width: float, height: float) -> int:
    """The face (row) whose box centre is nearest the image centre."""
    b = cache.faces["bbox"][face_rows]
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    d = ((cx - width / 2) / max(width, 1)) ** 2 + ((cy - height / 2) / max(height, 1)) ** 2
    return int(face_rows[int(np.argmin(d))])


def load_truth(truth_root: str | os.PathLike, cache: FaceCache) -> TruthSet:
    """Read TRUTH_ROOT's person folders and match their photos to the cache's faces."""
    root = Path(truth_root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: no such folder; pass a folder holding one "
                                 "sub-folder of photos per person")
    people = sorted(p.name for p in root.iterdir()
                    if p.is_dir() and not p.name.startswith((".", "_")))
    if not people:
        raise ValueError(f"{root}: no person folders inside; put each person's photos in "
                         "their own sub-folder")
    paths, owner = [], []
    for i, name in enumerate(people):
        found = FolderSource(str(root / name)).list_ids()
        paths += found
        owner += [i] * len(found)
    shas = _hash_all(paths, cache)
    person_of: dict[str, int] = {}
    conflicted: set[str] = set()
    for sha, who in zip(shas, owner):
        if not sha:
            continue
        if person_of.setdefault(sha, who) != who:
            conflicted.add(sha)
    truth = TruthSet(rows=np.zeros(0, dtype=np.int64), labels=np.zeros(0, dtype=np.int64),
                     people=people, images=len(paths), conflicts=len(conflicted))
    face_sha = cache.faces["sha256"]
    order = np.argsort(face_sha, kind="stable")
    sorted_sha = face_sha[order]
    dims = dict(zip(cache.files["sha256"].tolist(),
                    zip(cache.files["width"].tolist(), cache.files["height"].tolist())))
    rows, labels = [], []
    for sha, who in person_of.items():
        if sha in conflicted:
            continue
        if sha not in dims:
            truth.not_in_cache += 1
            continue
        lo, hi = np.searchsorted(sorted_sha, sha, "left"), np.searchsorted(sorted_sha, sha,
                                                                            "right")
        if lo == hi:
            truth.no_face += 1
            continue
        face_rows = order[lo:hi]
        if len(face_rows) > 1:
            truth.ambiguous += 1
        rows.append(centre_face(cache, face_rows, *dims[sha]))
        labels.append(who)
    srt = np.argsort(rows)
    truth.rows = np.asarray(rows, dtype=np.int64)[srt]
    truth.labels = np.asarray(labels, dtype=np.int64)[srt]
    return truth
