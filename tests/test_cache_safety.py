"""Tampered and wrong caches through the CLI: one `error:` line naming the file and the
column, exit 2, no traceback, nothing written, and never advice to delete a file that is not
provably a damaged cache of ours (issue 8 item 14, issue 15)."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import FACES, PACK, copy_cache, run_cli


def _arrays(cache: Path) -> dict[str, np.ndarray]:
    with np.load(cache, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _save(path: Path, arrays: dict) -> Path:
    with open(path, "wb") as fh:  # deliberately not atomic: these are hand-made files
        np.savez(fh, **arrays)
    return path


def _meta(arrays: dict) -> dict:
    return json.loads(str(arrays["meta"]))


def _segment(cache: Path, arrays: dict) -> Path:
    """A hand-made segment after those the base holds."""
    d = Path(str(cache) + ".segments")
    d.mkdir(exist_ok=True)
    seq = (_meta(_arrays(cache)).get("compacted_through") or 0) + 1
    return _save(d / f"seg-{seq:08d}.npz", arrays)


def _one_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in proc.stderr and "delete" not in lines[0]
    return lines[0]


def _cluster(cache: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = run_cli("cluster", cache, out, "--threshold", "0.65", check=False)
    assert not out.exists()
    return proc


def _faces_segment(arrays: dict, rows: slice = slice(0, 5), **changes) -> dict:
    """A segment holding a few face rows of the cache (and their file rows), changed."""
    seg = {"meta": arrays["meta"]}
    shas = arrays["faces.sha256"][rows]
    for k, v in arrays.items():
        if k.startswith("faces."):
            seg[k] = v[rows]
        elif k.startswith("files."):
            seg[k] = v[np.isin(arrays["files.sha256"], shas)]
    seg.update(changes)
    return seg


# ---- tampered columns ----------------------------------------------------------------------
def _drop(arrays, key):
    return {k: v for k, v in arrays.items() if k != key}


TAMPERED = {
    # name: (how the base is changed, words the error must hold)
    "missing column": (lambda a: _drop(a, "faces.bbox"), ["faces.bbox is missing"]),
    "row counts differ": (lambda a: dict(a, **{"faces.bbox": a["faces.bbox"][:-1]}),
                          ["faces.bbox has", "rows but faces.sha256 has"]),
    "bbox of shape (N, 2)": (lambda a: dict(a, **{"faces.bbox": a["faces.bbox"][:, :2]}),
                             ["faces.bbox has shape", ", 2), expected (N, 4)"]),
    "embeddings as strings": (lambda a: dict(a, **{"faces.embedding":
                                                   a["faces.embedding"].astype(str)}),
                              ["faces.embedding holds <U", "expected float32"]),
    "NaN embedding": (lambda a: dict(a, **{"faces.embedding": np.where(
        np.arange(len(a["faces.embedding"]))[:, None] == 7, np.nan, a["faces.embedding"])}),
                      ["faces.embedding has non-finite values", "first row 7"]),
    "inf in a bbox": (lambda a: dict(a, **{"faces.bbox": np.where(
        np.arange(len(a["faces.bbox"]))[:, None] == 2, np.inf, a["faces.bbox"])}),
                      ["faces.bbox has non-finite values"]),
    "unknown column": (lambda a: dict(a, **{"faces.embeding": a["faces.embedding"]}),
                       ["faces.embeding is not a column"]),
    "meta a JSON list": (lambda a: dict(a, meta=np.array("[1, 2]")),
                         ["meta is a JSON list, expected an object"]),
    "meta not JSON": (lambda a: dict(a, meta=np.array("{model: x")), ["meta is not JSON"]),
    "meta an int array": (lambda a: dict(a, meta=np.arange(3)), ["meta is not JSON"]),
    "embedding_dim a string": (lambda a: dict(a, meta=np.array(json.dumps(
        dict(_meta(a), embedding_dim="128")))), ['meta.embedding_dim is "128", expected int']),
    "sources not a list": (lambda a: dict(a, meta=np.array(json.dumps(
        dict(_meta(a), sources="/photos")))), ["meta.sources", "expected list"]),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_tampered_base_is_one_line_naming_the_file_and_the_column(faces_cache, tmp_path,
                                                                    name):
    change, needles = TAMPERED[name]
    bad = _save(tmp_path / "bad.npz", change(_arrays(faces_cache)))
    _one_error(_cluster(bad, tmp_path), str(bad), *needles)


def test_64d_rows_in_a_segment_of_a_128d_cache(faces_cache, tmp_path):
    cache = copy_cache(faces_cache, tmp_path)
    a = _arrays(cache)
    assert _meta(a)["embedding_dim"] == 128
    seg = _segment(cache, _faces_segment(a, **{"faces.embedding": a["faces.embedding"][:5, :64]}))
    _one_error(_cluster(cache, tmp_path),
               f"{seg}: faces.embedding has shape (5, 64), expected (N, 128)")


def test_a_segment_of_another_embedding_dim(faces_cache, tmp_path):
    cache = copy_cache(faces_cache, tmp_path)
    a = _arrays(cache)
    seg = _segment(cache, _faces_segment(a, **{
        "faces.embedding": a["faces.embedding"][:5, :64],
        "meta": np.array(json.dumps(dict(_meta(a), embedding_dim=64)))}))
    _one_error(_cluster(cache, tmp_path), str(seg), "meta.embedding_dim is 64", "has 128")


def test_a_truncated_base_or_segment_is_a_damaged_cache(faces_cache, tmp_path):
    cache = copy_cache(faces_cache, tmp_path)
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    line = _one_error(_cluster(cache, tmp_path), str(cache), "damaged face-sets cache")
    assert "move it aside and re-run embed" in line
    cache.write_bytes(data)
    seg = _segment(cache, _faces_segment(_arrays(cache)))
    seg_data = seg.read_bytes()
    seg.write_bytes(seg_data[:-300])   # cut into the zip directory
    _one_error(_cluster(cache, tmp_path), str(seg), "damaged face-sets cache")
    # a member cut short, the zip directory rebuilt around it
    a = _faces_segment(_arrays(cache))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in a.items():
            member = io.BytesIO()
            np.save(member, v)
            body = member.getvalue()
            zf.writestr(k + ".npy", body[:-40] if k == "faces.embedding" else body)
    seg.write_bytes(buf.getvalue())
    _one_error(_cluster(cache, tmp_path), str(seg), "faces.embedding declares",
               "truncated or tampered")


def test_a_zip_bomb_is_refused_before_it_is_inflated(faces_cache, tmp_path):
    a = _arrays(faces_cache)
    bomb = tmp_path / "bomb.npz"
    n = 400_000   # 400k x 128 float32 zeros: 205 MB inflated, ~0.2 MB on disk
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, v in a.items():
            if k != "faces.embedding":
                member = io.BytesIO()
                np.save(member, v)
                zf.writestr(k + ".npy", member.getvalue())
        with zf.open("faces.embedding.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (n, 128)})
            chunk = bytes(1 << 24)
            for _ in range(n * 128 * 4 // len(chunk)):
                fh.write(chunk)
            fh.write(bytes(n * 128 * 4 % len(chunk)))
    assert bomb.stat().st_size < 2_000_000
    _one_error(_cluster(bomb, tmp_path), str(bomb), "would inflate to", "not read")


def test_an_npy_header_claiming_a_huge_array_is_refused_without_allocating(faces_cache,
                                                                           tmp_path):
    a = _arrays(faces_cache)
    bad = tmp_path / "huge.npz"
    with zipfile.ZipFile(bad, "w") as zf:
        for k, v in a.items():
            member = io.BytesIO()
            if k == "faces.embedding":
                np.lib.format.write_array_header_1_0(
                    member, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 128)})
                member.write(v.tobytes())
            else:
                np.save(member, v)
            zf.writestr(k + ".npy", member.getvalue())
    _one_error(_cluster(bad, tmp_path), str(bad), "faces.embedding declares",
               "truncated or tampered")


# ---- not a cache at all (issue 15) -----------------------------------------------------------
def test_a_photo_given_as_cache_says_what_it_is(tmp_path):
    photo = next(FACES.rglob("*.jpg"))
    before = photo.read_bytes()
    line = _one_error(_cluster(photo, tmp_path), str(photo),
                      "is a JPEG image, not a face-sets cache (.npz)")
    assert "pickle" not in line
    assert photo.read_bytes() == before


@pytest.mark.parametrize("content, what", [(b"", "an empty file"), (b'{"kind": "x"}', "a JSON file"),
                                           (b"\x89PNG\r\n\x1a\n....", "a PNG image")])
def test_other_files_given_as_cache_say_what_they_are(tmp_path, content, what):
    f = tmp_path / "thing.npz"
    f.write_bytes(content)
    _one_error(_cluster(f, tmp_path), str(f), f"is {what}, not a face-sets cache")


def test_a_zip_that_is_not_ours_is_not_called_a_damaged_cache(tmp_path):
    f = tmp_path / "bundle.fsz"
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("0001.png", b"\x89PNG not really")
    _one_error(_cluster(f, tmp_path), str(f), "not a face-sets cache")
    f.write_bytes(f.read_bytes()[:-10])
    line = _one_error(_cluster(f, tmp_path), str(f), "not a face-sets cache")
    assert "damaged" not in line


def test_a_folder_given_as_cache_asks_about_swapped_arguments(tmp_path):
    _one_error(_cluster(FACES, tmp_path), str(FACES),
               "is a folder, not a cache file; did you swap the arguments?")


def test_embed_into_an_existing_folder_is_refused_before_any_work(tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    proc = run_cli("embed", FACES / "George_W_Bush", folder, *PACK, "--no-progress",
                   check=False)
    _one_error(proc, str(folder), "is a folder, not a cache file")
    assert list(folder.iterdir()) == []
    assert not Path(str(folder) + ".segments").exists()


def test_random_damage_is_always_a_cache_error(faces_cache, tmp_path):
    """Flipped bytes, cuts and insertions anywhere in a real cache: load_cache either reads
    it (the damage hit nothing that matters) or raises CacheError, nothing else."""
    from facesets.formats.cache import CacheError, load_cache

    data = faces_cache.read_bytes()
    rng = np.random.default_rng(8)
    bad = tmp_path / "fuzz.npz"
    outcomes = {"read": 0, "refused": 0}
    for trial in range(400):
        b = bytearray(data)
        at = int(rng.integers(len(b)))
        kind = trial % 3
        if kind == 0:
            b[at] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            del b[at:]
        else:
            b[at:at] = rng.bytes(int(rng.integers(1, 64)))
        bad.write_bytes(bytes(b))
        try:
            load_cache(bad)
            outcomes["read"] += 1
        except CacheError as exc:
            assert str(bad) in str(exc) and "\n" not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300, outcomes
