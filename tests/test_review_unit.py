"""The review server's reading of a photo without a face, without photos or a model: what
it reads (a regular file, capped; never a FIFO it would hang on, a folder or a larger
file) and what it sends (a format browsers show as it is, any other image as JPEG, nothing
for a file that is not an image)."""
from __future__ import annotations

import io
import os
import threading

import cv2
import numpy as np
import pytest
from PIL import Image

from facesets.review.server import browser_image, read_capped

pytestmark = pytest.mark.unit


def picture(fmt: str) -> bytes:
    img = np.zeros((30, 40, 3), np.uint8)
    img[:, :20] = (0, 0, 220)      # BGR: red left half
    buf = io.BytesIO()
    Image.fromarray(img[:, :, ::-1]).save(buf, fmt)
    return buf.getvalue()


def test_read_capped_reads_regular_files_only_and_up_to_the_cap(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"x" * 100)
    assert read_capped(f, 100) == b"x" * 100
    assert read_capped(f, 99) is None
    assert read_capped(tmp_path, 1 << 20) is None
    assert read_capped(tmp_path / "gone.png", 1 << 20) is None
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(read_capped(fifo, 1 << 20)), daemon=True)
    t.start()
    t.join(5)
    assert done == [None], "a FIFO in a photo's place neither hangs the server nor is read"


@pytest.mark.parametrize("fmt, ctype", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                        ("WEBP", "image/webp")])
def test_a_format_browsers_show_is_sent_as_it_is(fmt, ctype):
    data = picture(fmt)
    assert browser_image(data) == (data, ctype)


def test_a_tiff_is_sent_as_jpeg_of_the_same_picture():
    sent, ctype = browser_image(picture("TIFF"))
    img = cv2.imdecode(np.frombuffer(sent, np.uint8), cv2.IMREAD_COLOR)
    assert ctype == "image/jpeg" and sent[:2] == b"\xff\xd8" and img.shape == (30, 40, 3)
    assert img[15, 5, 2] > 180 and img[15, 35, 2] < 40       # red left, black right


@pytest.mark.parametrize("data", [b"", b"<html><script>alert(1)</script></html>",
                                  picture("PNG")[:-20]])
def test_what_is_not_an_image_is_not_sent(data):
    assert browser_image(data) is None
