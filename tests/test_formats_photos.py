"""Photos people actually have: HEIC/HEIF, AVIF, 16-bit PNG, CMYK and grayscale JPEG, PNG
with alpha, animated GIF and WebP (first frame), EXIF-rotated photos whose face is found only
after rotation. The files are made here from the real test photos; they go through embed
(in process and through the embed worker), cluster, refine and export-swap."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import pytest
from PIL import Image

from conftest import FACES, LOW_GATES, PACK, ROOT, SHARED, TEST_THRESHOLD, run_cli

pillow_heif.register_heif_opener()   # the test writes HEIC files with Pillow

# stored pixels for an EXIF orientation: the transpose whose inverse the tag asks for
STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
         6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_270}
BOX = (0, 20, 250, 230)   # 250 x 210: not square, so a missed rotation shows in the size


def encode(im: Image.Image, fmt: str, orientation: int = 1, **kw) -> bytes:
    """``im`` (as displayed) saved in ``fmt``; with an orientation, the pixels are stored
    turned and the EXIF tag says how to turn them back."""
    buf = io.BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im = im.transpose(STORE[orientation])
        kw["exif"] = exif.tobytes()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def animated(first: Image.Image, second: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    first.save(buf, fmt, save_all=True, append_images=[second], duration=100, loop=0)
    return buf.getvalue()


def png16(im: Image.Image) -> bytes:
    bgr = cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR)
    return cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1].tobytes()


def with_alpha(im: Image.Image) -> bytes:
    """A cut-out: a transparent, black border around the opaque middle."""
    rgba = np.array(im.convert("RGBA"))
    rgba[:20, :, :] = 0
    rgba[-20:, :, :] = 0
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


# ---- decode, pure: every orientation of every format, colour modes, first frames -------
def _pattern() -> Image.Image:
    """An asymmetric colour gradient 120 x 90 (any wrong turn or flip changes it)."""
    y, x = np.mgrid[0:90, 0:120]
    rgb = np.stack([x * 2, y * 2, (x + 2 * y) % 256], axis=-1).astype(np.uint8)
    rgb[5:20, 5:40] = (255, 0, 0)
    return Image.fromarray(rgb, "RGB")


@pytest.mark.unit
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "HEIF", "AVIF"])
def test_every_exif_orientation_of_every_format_decodes_upright(fmt):
    from facesets.io.imageio import decode, read_header

    im = _pattern()
    want = cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2BGR).astype(float)
    lossy = {"quality": 95} if fmt in ("JPEG", "WEBP", "HEIF", "AVIF") else {}
    for orientation in range(1, 9):
        data = encode(im, fmt, orientation, **lossy)
        header = read_header(data)
        assert (header.width, header.height) == (120, 90), (fmt, orientation)
        got = decode(data)
        assert got.shape == (90, 120, 3), (fmt, orientation)
        assert np.abs(got.astype(float) - want).mean() < 6, (fmt, orientation)
        half = decode(data, 2)
        assert half.shape[:2] == (45, 60), (fmt, orientation, half.shape)


@pytest.mark.unit
def test_colour_modes_bit_depths_and_first_frames():
    from facesets.io.imageio import decode, read_header

    im = _pattern()
    want = cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2BGR).astype(float)
    other = im.transpose(Image.Transpose.ROTATE_180)

    def err(data: bytes) -> float:
        return float(np.abs(decode(data).astype(float) - want).mean())

    assert err(png16(im)) < 1                                   # 16 bits -> 8, not clipped
    gray16 = np.asarray(im.convert("L")).astype(np.uint16) * 257
    g = decode(cv2.imencode(".png", gray16)[1].tobytes())
    assert abs(float(g.mean()) - float(np.asarray(im.convert("L")).mean())) < 1
    assert err(encode(im.convert("CMYK"), "JPEG", quality=95)) < 6
    gray = decode(encode(im.convert("L"), "JPEG", quality=95))
    assert gray.shape == (90, 120, 3) and np.allclose(gray[..., 0], gray[..., 2], atol=1)
    rgba = im.convert("RGBA")
    rgba.putalpha(200)
    assert err(encode(rgba, "PNG")) < 1                         # alpha dropped, colours kept
    la = decode(encode(im.convert("LA"), "PNG"))                # gray + alpha
    assert la.shape == (90, 120, 3)
    for fmt in ("GIF", "WEBP"):
        data = animated(im, other, fmt)
        assert read_header(data).width == 120
        assert err(data) < (25 if fmt == "GIF" else 8), fmt     # the first frame, not the 2nd


@pytest.mark.unit
def test_bomb_check_holds_for_heif_and_avif():
    from facesets.io.imageio import ImageError, read_header

    for fmt in ("HEIF", "AVIF"):
        data = encode(_pattern(), fmt)
        assert read_header(data, max_pixels=120 * 90).format in ("HEIF", "AVIF")
        with pytest.raises(ImageError, match="image too large"):
            read_header(data, max_pixels=120 * 90 - 1)


@pytest.mark.unit
def test_heic_without_pillow_heif_says_what_to_install(tmp_path):
    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(encode(_pattern(), "HEIF"))
    code = ("import sys; sys.modules['pillow_heif'] = None\n"
            "from facesets.io.imageio import ImageError, read_header\n"
            f"data = open({str(heic)!r}, 'rb').read()\n"
            "try:\n    read_header(data)\nexcept ImageError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "pillow-heif" in out and "pip install pillow-heif" in out, out


# ---- end to end on real photos ----------------------------------------------------------
def _photo(person: str, i: int) -> Image.Image:
    with Image.open(FACES / person / f"{person}_{i:04d}.jpg") as im:
        return im.convert("RGB").crop(BOX)


# file name -> (person, photo number, bytes maker); the rotated ones are photos whose face
# the detector does not find while turned (checked below with untagged copies)
ROTATED = {"rumsfeld_2_rot6.HEIC": ("Donald_Rumsfeld", 2, 6, "HEIF"),
           "rumsfeld_4_rot3.jpg": ("Donald_Rumsfeld", 4, 3, "JPEG"),
           "chavez_3_rot8.jpeg": ("Hugo_Chavez", 3, 8, "JPEG"),
           "chavez_2_rot6.avif": ("Hugo_Chavez", 2, 6, "AVIF")}


def _library(root: Path) -> dict[str, str]:
    """The test library; returns file name -> person."""
    root.mkdir(parents=True)
    made = {
        "rumsfeld_1.heic": ("Donald_Rumsfeld", 1, lambda im: encode(im, "HEIF")),
        "rumsfeld_3.avif": ("Donald_Rumsfeld", 3, lambda im: encode(im, "AVIF")),
        "rumsfeld_5.heif": ("Donald_Rumsfeld", 5, lambda im: encode(im, "HEIF")),
        "chavez_1.png": ("Hugo_Chavez", 1, png16),
        "chavez_6.jpg": ("Hugo_Chavez", 6, lambda im: encode(im.convert("CMYK"), "JPEG")),
        "chavez_4.jpg": ("Hugo_Chavez", 4, lambda im: encode(im.convert("L"), "JPEG")),
        "bush_1.png": ("George_W_Bush", 1, with_alpha),
        "bush_2.gif": ("George_W_Bush", 2, lambda im: animated(
            im, _photo("Hugo_Chavez", 5), "GIF")),
        "bush_3.webp": ("George_W_Bush", 3, lambda im: animated(
            im, _photo("Donald_Rumsfeld", 6), "WEBP")),
        "bush_4.HEIC": ("George_W_Bush", 4, lambda im: encode(im, "HEIF")),
    }
    people = {}
    for name, (person, i, make) in made.items():
        (root / name).write_bytes(make(_photo(person, i)))
        people[name] = person
    control = root.parent / "untagged"
    control.mkdir()
    for name, (person, i, orientation, fmt) in ROTATED.items():
        (root / name).write_bytes(encode(_photo(person, i), fmt, orientation))
        people[name] = person
        turned = _photo(person, i).transpose(STORE[orientation])
        (control / f"{name}.png").write_bytes(encode(turned, "PNG"))
    return people


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    people = _library(root / "photos")
    cache = root / "c.npz"
    embed = run_cli("embed", root / "photos", cache, *PACK, "--no-progress")
    return root, people, cache, embed


def test_every_format_is_embedded_and_rotated_faces_are_found(library):
    from facesets.formats.cache import load_cache

    root, people, cache, embed = library
    assert f"files seen {len(people)}," in embed.stdout, embed.stdout
    assert "cannot read yet" not in embed.stdout
    c = load_cache(cache)
    by_sha = dict(zip(c.files["sha256"].tolist(), zip(
        c.files["status"].tolist(), c.files["width"].tolist(), c.files["height"].tolist(),
        c.files["error"].tolist())))
    rows = {Path(p).name: by_sha[s] for p, s in zip(c.paths["path"].tolist(),
                                                     c.paths["sha256"].tolist())}
    assert set(rows) == set(people)
    for name, (status, w, h, error) in rows.items():
        assert (status, error) == ("face", ""), (name, status, error)
        assert (w, h) == (250, 210), name          # the displayed size, after orientation
    # the same turned pixels without the tag: no face (so the tag is what found it)
    untagged = root / "untagged.npz"
    run_cli("embed", root / "untagged", untagged, *PACK, "--no-progress")
    statuses = load_cache(untagged).files["status"].tolist()
    assert statuses == ["noface"] * len(ROTATED), statuses


def test_cluster_keeps_each_person_together_across_formats(library, tmp_path):
    root, people, cache, _ = library
    run_cli("cluster", cache, tmp_path / "raw", "--threshold", TEST_THRESHOLD)
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    groups = [{Path(f["path"]).name for f in p["faces"]} for p in manifest["persons"]]
    for person in set(people.values()):
        names = {n for n, who in people.items() if who == person}
        holding = [g for g in groups if g & names]
        assert len(holding) == 1 and holding[0] >= names, (person, groups)
        assert {people[n] for n in holding[0]} == {person}, holding[0]


def test_export_swap_crops_heic_and_rotated_sources_upright(library, tmp_path):
    from facesets.backends import load_backend

    root, people, cache, _ = library
    run_cli("refine", cache, tmp_path / "facesets", "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES,
            "--min-faces", "3")
    out = tmp_path / "swap"
    run_cli("export-swap", cache, tmp_path / "facesets" / "refine_manifest.json", out,
            "--outlier-threshold", TEST_THRESHOLD, "--min-face-short", "40",
            "--model-root", str(SHARED / "insightface"), "--no-progress")
    crops = {}
    for manifest in out.glob("faceset_*/manifest.json"):
        d = manifest.parent
        for f in json.loads(manifest.read_text(encoding="utf-8"))["faces"]:
            crops[Path(f["path"]).name] = d / f["file"]
    wanted = {"rumsfeld_1.heic", "bush_4.HEIC", *ROTATED}
    assert wanted <= set(crops), sorted(crops)
    detector = load_backend("testpack_s", str(SHARED / "insightface"), None, 640,
                            with_recognition=False)
    for name in wanted:
        crop = cv2.imread(str(crops[name]))
        assert crop is not None and len(detector.detect(crop)) >= 1, name   # upright face


def test_worker_reads_heic_like_in_process_embed(library, tmp_path):
    from test_worker import assert_same_records, run_worker

    root, people, cache, _ = library
    staged, queue, out = tmp_path / "c.npz", tmp_path / "q.json", tmp_path / "out"
    run_cli("embed", root / "photos", staged, "--stage-queue", queue, *PACK, "--no-progress")
    done = run_worker(queue, out)
    assert "failed 0" in done.stdout, done.stdout
    run_cli("embed", staged, "--merge-results", out)
    assert_same_records(staged, cache)


def test_max_pixels_rejects_large_heic_and_avif(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    im = _photo("George_W_Bush", 5)
    (src / "big.heic").write_bytes(encode(im, "HEIF"))
    (src / "big.avif").write_bytes(encode(im, "AVIF"))
    cache = tmp_path / "c.npz"
    run_cli("embed", src, cache, *PACK, "--no-progress", "--max-pixels", "50000")
    from facesets.formats.cache import load_cache
    c = load_cache(cache)
    assert c.files["status"].tolist() == ["error", "error"]
    assert all("image too large (250x210" in e for e in c.files["error"].tolist())
