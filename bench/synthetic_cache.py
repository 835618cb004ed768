"""Synthetic caches for benchmarks of the cache machinery (no model needed).

Rows follow the real schema (facesets.formats.cache) with random 512-D embeddings, like buffalo_l.
"""
from __future__ import annotations

import numpy as np

from facesets.formats.cache import FaceCache, empty_table

DIM = 512


def face_rows(shas: list[str], rng: np.random.Generator, faces_per_file: float = 1.2):
    """One dict per face for the given files (1 or 2 faces each, ~faces_per_file on average)."""
    rows = []
    for sha in shas:
        for i in range(1 + int(rng.random() < faces_per_file - 1)):
            rows.append(dict(sha256=sha, index=i,
                             embedding=rng.standard_normal(DIM).astype(np.float32),
                             bbox=[10, 10, 200, 220], kps=rng.random((5, 2)) * 200,
                             det_score=0.8, face_short=190.0, blur=80.0, pose=None,
                             pose_method=""))
    return rows


def synthetic_cache(n_faces: int, seed: int = 0) -> FaceCache:
    """A cache with ~n_faces faces over ~n_faces/1.2 files, built column-wise (fast)."""
    rng = np.random.default_rng(seed)
    n_files = int(n_faces / 1.2)
    shas = np.array([f"{i:064x}" for i in range(n_files)])
    face_sha = np.concatenate([shas, shas[: n_faces - n_files]])
    index = np.concatenate([np.zeros(n_files, np.int32), np.ones(n_faces - n_files, np.int32)])
    cache = FaceCache(meta={"model": "synthetic", "model_id": "synthetic:0",
                            "embedding_dim": DIM})
    paths = np.array([f"/photos/{i // 1000:04d}/img_{i:07d}.jpg" for i in range(n_files)])
    cache.paths = {"path": paths, "sha256": shas, "size": np.full(n_files, 3_000_000),
                   "mtime_ns": np.arange(n_files, dtype=np.int64), "error": np.array([""] * n_files)}
    cache.files = {"sha256": shas, "path": paths, "width": np.full(n_files, 4000, np.int32),
                   "height": np.full(n_files, 3000, np.int32),
                   "status": np.array(["face"] * n_files), "error": np.array([""] * n_files)}
    faces = empty_table("faces", DIM)
    faces.update(sha256=face_sha, index=index,
                 embedding=rng.standard_normal((n_faces, DIM)).astype(np.float32),
                 bbox=np.tile(np.float32([10, 10, 200, 220]), (n_faces, 1)),
                 kps=rng.random((n_faces, 5, 2)).astype(np.float32),
                 det_score=np.full(n_faces, 0.8, np.float32),
                 face_short=np.full(n_faces, 190, np.float32),
                 blur=np.full(n_faces, 80, np.float32),
                 pose=np.full((n_faces, 3), np.nan, np.float32),
                 pose_method=np.array([""] * n_faces))
    cache.faces = faces
    return cache
