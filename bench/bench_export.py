"""export-swap crops per second on 12-MP photos, against a naive per-face loop, same run.

    python bench/bench_export.py [--n 24] [--rounds 2]

Photos: LFW faces upscaled onto 4000x3000 canvases (bench/photos.py), 1-3 faces each, embedded
with the offline pack, refined (0.65, min 2 photos) so that the faces of one photo land in
different facesets. export-swap then crops every kept face. The baseline is what a first script
does: for each face, cv2.imread the whole source (full decode), cut the padded square, resize,
re-detect on the crop, write the PNG. Both re-detect with the same detector. Reports crops/s of
each, the ratio, and decodes per source photo (export-swap must decode each file once).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from photos import SHARED, make_photos  # noqa: E402

from facesets.steps import export  # noqa: E402
from facesets.backends import load_backend  # noqa: E402
from facesets.cli import main as cli  # noqa: E402
from facesets.core.crop import crop_square, cut  # noqa: E402

PACK = ["--model", "testpack_s", "--model-root", str(SHARED / "insightface")]


def naive(manifest: dict, detect, dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for fs in manifest["facesets"]:
        for f in fs["faces"]:
            img = cv2.imread(f["path"])                       # full decode, every face
            crop = cut(img, 1.0, crop_square(f["bbox"], 0.5), 512)
            detect(crop)
            cv2.imwrite(str(dest / f"{n}.png"), crop)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24, help="12-MP photos (24)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp / "photos", a.n, seed=3)
        cache = tmp / "c.npz"
        assert cli(["embed", str(tmp / "photos"), str(cache), *PACK, "--no-progress"]) == 0
        assert cli(["refine", str(cache), str(tmp / "fs"), "--initial-threshold", "0.65",
                    "--merge-threshold", "0.5", "--outlier-threshold", "0.65",
                    "--min-short", "20", "--min-blur", "0", "--min-det-score", "0.5",
                    "--min-faces", "2"]) == 0
        rm = tmp / "fs" / "refine_manifest.json"
        manifest = json.loads(rm.read_text())
        det = load_backend("testpack_s", str(SHARED / "insightface"), None, 640,
                           with_recognition=False)
        params = export.ExportParams(outlier_threshold=2.0, min_face_short=0)
        sources = {f["sha256"] for fs in manifest["facesets"] for f in fs["faces"]}
        faces = sum(len(fs["faces"]) for fs in manifest["facesets"])
        print(f"{a.n} photos 4000x3000, {faces} faces in {len(manifest['facesets'])} "
              f"facesets from {len(sources)} photos ({faces / len(sources):.2f} per photo)")
        for r in range(a.rounds):
            export.DECODES[0] = 0
            t = time.perf_counter()
            top = export.run_export(cache, rm, tmp / f"swap{r}", params, lambda: det,
                                    progress=False)
            t_ours = time.perf_counter() - t
            crops = top["summary"]["crops"]
            decodes = export.DECODES[0]
            t = time.perf_counter()
            n_naive = naive(manifest, det.detect, tmp / f"naive{r}")
            t_naive = time.perf_counter() - t
            print(f"round {r}: export-swap {crops} crops in {t_ours:.2f} s = "
                  f"{crops / t_ours:.2f} crops/s; naive {n_naive} crops in {t_naive:.2f} s = "
                  f"{n_naive / t_naive:.2f} crops/s; ratio {t_naive / t_ours:.2f}x; "
                  f"decodes {decodes} for {len(sources)} source photos "
                  f"({decodes / len(sources):.2f} per photo)")


if __name__ == "__main__":
    main()
