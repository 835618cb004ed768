"""Flip test-time augmentation, measured before it is built (docs/clustering.md, "Linkage").

    python bench/bench_flip.py CACHE OUT.npy --model testpack_s --model-root ../shared/insightface
    python bench/bench_quality.py CACHE ../shared/testdata/lfw_dev graph+ratio=0.78 \\
        --embeddings OUT.npy

For every face of CACHE: the aligned crop recognition saw (the stored 5 keypoints, the photo
decoded at full size), mirrored, through the same recognition model; the face's new
embedding is the unit mean of the two unit embeddings. OUT.npy holds them in the cache's face
order, for ``bench_quality.py --embeddings``. Before that it checks on the first faces that
the un-mirrored crop gives back the cached embedding (so the crops are the ones embed made:
this holds for photos embed recognised at full scale, such as lfw_dev's 250 px ones).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facesets.backends.insightface_backend import InsightFaceBackend  # noqa: E402
from facesets.engine import normalize_rows  # noqa: E402
from facesets.formats.cache import load_cache  # noqa: E402
from facesets.io.imageio import decode  # noqa: E402

CHECK_FACES = 50          # faces whose un-mirrored embedding must match the cache
CHECK_MIN_COSINE = 0.99


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("out")
    ap.add_argument("--model", default="buffalo_l")
    ap.add_argument("--model-root", default=None)
    a = ap.parse_args()
    from insightface.utils import face_align

    cache = load_cache(a.cache)
    backend = InsightFaceBackend(a.model, a.model_root)
    rec = backend.rec
    size = rec.input_size[0]
    faces = cache.faces
    path_of = dict(zip(cache.files["sha256"].astype(str), cache.files["path"].astype(str)))
    sha = faces["sha256"].astype(str)
    order = np.argsort(sha, kind="stable")
    starts = np.r_[0, np.flatnonzero(sha[order][1:] != sha[order][:-1]) + 1, len(order)]
    orig = normalize_rows(faces["embedding"])
    flip = np.zeros_like(orig)
    checked, worst = 0, 1.0
    t0 = time.perf_counter()
    for s, e in tqdm(list(zip(starts[:-1], starts[1:])), desc="flip", unit="photo"):
        rows = order[s:e]
        image = decode(Path(path_of[sha[rows[0]]]).read_bytes())
        crops = [face_align.norm_crop(image, landmark=faces["kps"][r], image_size=size)
                 for r in rows]
        if checked < CHECK_FACES:
            same = normalize_rows(rec.get_feat(crops).astype(np.float32))
            cos = (same * orig[rows]).sum(1)
            worst = min(worst, float(cos.min()))
            checked += len(rows)
        flip[rows] = normalize_rows(rec.get_feat([c[:, ::-1] for c in crops])
                                    .astype(np.float32))
    if worst < CHECK_MIN_COSINE:
        raise SystemExit(f"the un-mirrored crops do not give back the cached embeddings "
                         f"(cosine {worst:.4f} < {CHECK_MIN_COSINE}): this cache was not "
                         f"recognised at full scale")
    out = normalize_rows(orig + flip)
    np.save(a.out, out)
    print(f"{len(out)} faces in {time.perf_counter() - t0:.0f} s; check on {checked} faces: "
          f"cosine >= {worst:.4f}; cosine(original, mirrored): median "
          f"{np.median((orig * flip).sum(1)):.3f}")


if __name__ == "__main__":
    main()
