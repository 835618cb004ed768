"""dedup on the real test photos plus copies made here: byte-identical, resized, re-encoded."""
from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from conftest import FACES, PACK, copy_cache, run_cli
from facesets.formats.cache import load_cache
from facesets.steps.dedup import duplicates_path, near_pairs
from facesets.formats.manifest import DUPLICATES_MANIFEST, load_manifest


def _photo_sets(report: dict) -> list[set[str]]:
    return [{p for ph in g["photos"] for p in ph["paths"]} for g in report["near_photos"]]


def test_dedup_finds_identical_resized_and_reencoded_copies(faces_cache, tmp_path):
    originals = sorted((FACES / "Colin_Powell").glob("*.jpg"))
    resized_src, png_src, ident_src, cropped_src = originals[0], originals[1], originals[2], \
        originals[3]
    extra = tmp_path / "extra"
    extra.mkdir()
    # resized copies (down 0.8x and up 1.5x, re-encoded as JPEG), a lossless PNG re-encode
    # and a byte-identical copy. (Halving these 250 px photos leaves 50 px faces whose
    # embeddings move by more than 0.03 on the small test recognizer: not a duplicate then.)
    with Image.open(resized_src) as im:
        im.resize((im.width * 4 // 5, im.height * 4 // 5), Image.LANCZOS).save(
            extra / "smaller.jpg", quality=85)
        im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.LANCZOS).save(
            extra / "larger.jpg", quality=75)
    with Image.open(png_src) as im:
        im.save(extra / "reencoded.png")
    shutil.copy2(ident_src, extra / "identical.jpg")
    # a crop (the face takes a larger share of the image): same face, not the same photo
    with Image.open(cropped_src) as im:
        w, h = im.size
        im.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w, h)).save(
            extra / "cropped.jpg", quality=95)
    cache = copy_cache(faces_cache, tmp_path)
    run_cli("embed", extra, cache, *PACK, "--no-progress")

    proc = run_cli("dedup", cache, "--no-progress")
    assert "1 byte-identical groups" in proc.stdout
    report = load_manifest(duplicates_path(cache), DUPLICATES_MANIFEST)
    assert report["identical"] == [{"sha256": report["identical"][0]["sha256"],
                                    "paths": [str(ident_src), str(extra / "identical.jpg")]}]
    groups = _photo_sets(report)
    assert {str(resized_src), str(extra / "smaller.jpg"), str(extra / "larger.jpg")} in groups
    assert {str(png_src), str(extra / "reencoded.png")} in groups
    # ground truth: the 180 test photos are distinct photos, so every group is one of ours
    assert len(groups) == 2
    assert report["summary"]["near_photos"] == 5
    for g in report["near_faces"]:
        assert len({f["sha256"] for f in g["faces"]}) == len(g["faces"])
        assert g["max_distance"] <= 0.03

    # the crop is excluded by the size rule, not by the distance: show it is that close
    c = load_cache(cache)
    keys = dict(zip(c.files["path"].tolist(), c.files["sha256"].tolist()))
    emb = c.faces["embedding"] / np.linalg.norm(c.faces["embedding"], axis=1, keepdims=True)
    a = np.flatnonzero(c.faces["sha256"] == keys[str(cropped_src)])
    b = np.flatnonzero(c.faces["sha256"] == keys[str(extra / "cropped.jpg")])
    closest = 1 - (emb[a] @ emb[b].T).max()
    assert closest <= 0.03, f"crop too different to test the size rule ({closest:.3f})"
    assert all(str(extra / "cropped.jpg") not in g for g in groups)


def test_near_pairs_matches_brute_force_and_never_builds_n_by_n(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x[150:160] = x[:10] + rng.normal(scale=0.02, size=(10, 16))   # ten near copies
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr("facesets.core.near.CHUNK_ELEMENTS", 300 * 7)  # 7 rows per block
    pairs, dist = near_pairs(x, 0.03)
    d = 1 - x @ x.T
    want = {(i, j) for i, j in zip(*np.nonzero(d <= 0.03)) if i < j}
    assert {tuple(p) for p in pairs.tolist()} == want and len(want) >= 10
    assert np.allclose(dist, [d[i, j] for i, j in pairs], atol=1e-5)


def test_dedup_missing_cache_is_a_clear_error(tmp_path):
    proc = run_cli("dedup", tmp_path / "none.npz", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "none.npz" in proc.stderr


def test_large_caches_use_the_neighbour_search_and_find_the_same_pairs(monkeypatch):
    """Past EXACT_MAX_FACES the search goes through the engine's k-NN cells; on clustered
    embeddings with planted near copies it finds exactly what the exact search finds."""
    import facesets.engine.knn as knn

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(400, 64))
    x = centres[rng.integers(0, 400, 6000)] + rng.normal(scale=0.35, size=(6000, 64))
    copies = rng.choice(6000, 60, replace=False)
    x[rng.choice(np.setdiff1d(np.arange(6000), copies), 60, replace=False)] = \
        x[copies] + rng.normal(scale=0.01, size=(60, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    exact, _ = near_pairs(x, 0.03)
    monkeypatch.setattr("facesets.core.near.EXACT_MAX_FACES", 1000)
    monkeypatch.setattr(knn, "FLAT_MAX_FACES", 1000)  # the approximate cell search
    approx, dist = near_pairs(x, 0.03)
    assert len(exact) >= 60
    assert {tuple(p) for p in approx.tolist()} == {tuple(p) for p in exact.tolist()}
    assert (dist <= 0.03).all()
