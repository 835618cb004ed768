"""Pure logic of the Immich import: box scaling, path tails, thumbnail paths, the state
file's validation (no server, no photos)."""
from __future__ import annotations

import json

import pytest

from facesets.formats.immich_state import (StateError, StateWriter, header, load_finalize,
                                           load_state, record, state_path, write_finalize)
from facesets.sources.immich import (Breaker, api_base, asset_dims, face_box,
                                     face_short_edges, origin, public_url)
from facesets.steps.immich_stage import is_thumbnail, tail_path

pytestmark = pytest.mark.unit


def face(x1, y1, x2, y2, w, h):
    return {"boundingBoxX1": x1, "boundingBoxY1": y1, "boundingBoxX2": x2,
            "boundingBoxY2": y2, "imageWidth": w, "imageHeight": h}


def test_boxes_scale_from_the_preview_to_the_original():
    # a 1440 x 1080 preview of a 4000 x 3000 original: 100 px there is 277.8 px here
    assert face_short_edges([face(0, 0, 100, 120, 1440, 1080)], (4000, 3000)) == \
        [pytest.approx(100 * 4000 / 1440)]
    # the preview is upright, the recorded size is not (portrait photo, EXIF rotated)
    assert face_short_edges([face(0, 0, 100, 120, 1080, 1440)], (4000, 3000)) == \
        [pytest.approx(100 * 3000 / 1080)]
    # unknown original size: the preview's own pixels; broken boxes are ignored
    assert face_short_edges([face(0, 0, 50, 80, 720, 540), face(5, 5, 5, 9, 720, 540),
                             {"boundingBoxX1": "x"}], None) == [50]
    assert asset_dims({"width": 0, "exifInfo": {"exifImageWidth": 4000,
                                                "exifImageHeight": 3000,
                                                "orientation": "6"}}) == (3000, 4000)


def test_tails_thumbnails_and_urls():
    assert tail_path("/usr/src/app/upload/library/admin/2023/2023-01-01/IMG_1.jpg", "a") == \
        "2023-01-01/IMG_1.jpg"
    assert tail_path("C:\\Photos\\.trip\\..\\x.jpg", "a") == "_trip/x.jpg"
    assert tail_path("", "abc") == "abc.jpg"
    assert is_thumbnail("/data/library/thumbs/u1/ab/cd/f00-preview.jpeg")
    assert is_thumbnail("/ext/immich/thumbs/x/y-thumbnail.webp")
    assert not is_thumbnail("/photos/thumbs-up/IMG-preview.jpg.bak")
    assert public_url("https://me:secret@nas.local:2283/") == "https://nas.local:2283"
    assert api_base("http://nas:2283/api/") == "http://nas:2283"


def test_breaker_probes_after_the_threshold_and_trips_only_when_the_probe_fails():
    answers = [True, False]
    b = Breaker(lambda: answers.pop(0), threshold=3)
    for _ in range(3):
        b.failure()                       # the 3rd probes: the server answers, count reset
    b.failure(), b.success(), b.failure(), b.failure()
    with pytest.raises(Exception, match="server down"):
        b.failure()                       # 3 in a row again: the probe fails
    assert b.probes == 2 and b.tripped


def test_state_round_trip_and_every_bad_field_is_one_line(tmp_path):
    root = tmp_path / "root"
    w = StateWriter(root, header("http://nas:2283", "alice", "/c.npz"))
    sha = "ab" * 32
    w.write(record("a-1", "staged", path="2020/x.jpg", sha256=sha, size=3, faces=1,
                   max_face=120.0))
    w.write(record("a-2", "error", reason="HTTP 500"))
    w.write(record("a-2", "noface"))
    head, latest = load_state(root)
    assert head["user"] == "alice" and latest["a-2"]["status"] == "noface"
    path = state_path(root)
    with open(path, "ab") as fh:                     # a kill mid-line: ignored
        fh.write(b'{"asset": "a-3", "sta')
    assert set(load_state(root)[1]) == {"a-1", "a-2"}
    good = path.read_text().splitlines()[:4]
    for bad, field in ((record("a-4", "staged", path="../x.jpg", sha256=sha), "path"),
                       (record("a-4", "staged", path="/etc/x.jpg", sha256=sha), "path"),
                       (record("a-4", "alias", path="x.jpg", sha256="zz"), "sha256"),
                       ({"asset": "a/../4", "status": "noface"}, "asset"),
                       ({"asset": "a-4", "status": "lost"}, "status"),
                       (record("a-4", "small", max_face=-1), "max_face")):
        path.write_text("\n".join(good + [json.dumps(bad), json.dumps(record("a-5", "thumb"))])
                        + "\n")
        with pytest.raises(StateError) as exc:
            load_state(root)
        assert str(path) in str(exc.value) and field in str(exc.value)
        assert "\n" not in str(exc.value)
    path.write_text(json.dumps(dict(header("http://x", "a", "/c"), version=9)) + "\n")
    with pytest.raises(StateError, match="newer"):
        load_state(root)


def test_finalize_steps_must_be_a_prefix(tmp_path):
    steps = ("stage", "embed", "match")
    worker = ("stage", "worker", "merge", "match")
    assert load_finalize(tmp_path, steps) == []
    write_finalize(tmp_path, ["stage"], steps)
    assert load_finalize(tmp_path, steps) == ["stage"]
    with pytest.raises(StateError, match="unfinished finalize"):
        load_finalize(tmp_path, worker)            # switching modes half-way: refused
    write_finalize(tmp_path, list(worker), worker)
    assert load_finalize(tmp_path, steps) == []    # a finished run of the other mode
    write_finalize(tmp_path, ["match"], steps)
    with pytest.raises(StateError, match="prefix"):
        load_finalize(tmp_path, steps)


def test_junk_boxes_and_sizes_are_dropped_where_they_are_read():
    nan, inf = float("nan"), float("inf")
    for junk in (face(nan, 0, 50, 50, 100, 100), face(0, 0, inf, 50, 100, 100),
                 face(0, 0, 50, 50, inf, 100), face(0, 0, 50, 50, 0, 100),
                 face(0, 0, 1e308, 1e308, 100, 100), face("0", 0, 50, 50, 100, 100),
                 face(True, 0, 50, 50, 100, 100), face(120, 0, 150, 50, 100, 100),
                 face(0, 0, 50, 50, 100, -100), {"imageWidth": 100}):
        assert face_box(junk) is None, junk
        assert face_short_edges([junk], (400, 400)) == []
    # a box reaching past the image is clipped to it
    assert face_box(face(-10, -10, 60, 200, 100, 100)) == (0, 0, 60, 100, 100, 100)
    assert asset_dims({"width": inf, "height": 10}) is None
    assert asset_dims({"width": nan, "height": nan, "exifInfo": {"exifImageWidth": 40,
                                                                 "exifImageHeight": 30}}) \
        == (40, 30)
    assert asset_dims({"width": 10, "height": 10, "exifInfo": "junk"}) == (10, 10)
    assert asset_dims({"width": 0, "exifInfo": "junk"}) is None


def test_origins_bind_the_key():
    assert origin("http://Nas:2283/api") == origin("http://nas:2283/x/y") == \
        ("http", "nas", 2283)
    assert origin("https://nas/") == ("https", "nas", 443)
    assert origin("http://nas/") != origin("https://nas/")
    assert origin("http://nas:2283@evil:80/") == ("http", "evil", 80)
    assert origin("http://nas:99999/") != origin("http://nas/")


def test_the_state_writer_refuses_nan_and_infinity_and_the_reader_too(tmp_path):
    root = tmp_path / "root"
    w = StateWriter(root, header("http://nas:2283", "alice", "/c.npz"))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(StateError, match="max_face"):
            w.write(record("a-1", "small", faces=1, max_face=bad))
    with pytest.raises(StateError, match="holding NaN or infinity"):
        w.write(record("a-1", "error", reason="x", extra=float("nan")))
    w.write(record("a-1", "small", faces=1, max_face=40.0))
    text = state_path(root).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert load_state(root)[1]["a-1"]["max_face"] == 40.0
    # a line an older face-sets wrote with Infinity is refused, naming the field
    with open(state_path(root), "a") as fh:
        fh.write('{"asset": "a-2", "status": "small", "faces": 1, "max_face": Infinity}\n'
                 '{"asset": "a-3", "status": "noface"}\n')
    with pytest.raises(StateError, match="line 3: field max_face .*; delete that line"):
        load_state(root)
