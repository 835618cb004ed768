"""The photo-source seam: FolderSource lists what scan_source lists, analysis reads bytes
through a source, and a source whose ids are not paths works the same."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from facesets.core.analyze import load_photo
from facesets.sources import FolderSource, PhotoSource, SourceItem, open_source
from facesets.sources.folder import scan_source

pytestmark = pytest.mark.unit


def _png(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _library(root):
    (root / "a").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a" / "x.png").write_bytes(_png())
    (root / "b.PNG").write_bytes(_png())
    (root / ".hidden" / "y.png").write_bytes(_png())
    (root / "c.jxl").write_bytes(b"jxl")
    return root


def test_folder_source_lists_and_reports_what_scan_source_does(tmp_path):
    lib = _library(tmp_path / "lib")
    source = open_source(str(lib))
    scan = scan_source(str(lib))
    assert isinstance(source, FolderSource)
    assert source.list_ids() == scan.images == [str(lib / "a" / "x.png"), str(lib / "b.PNG")]
    assert source.skipped_lines() == scan.skipped_lines(str(lib))
    assert source.describe() == {"kind": "folder", "root": str(lib)}
    first = source.list_ids()[0]
    st = os.stat(first)
    assert source.item(first) == SourceItem(first, st.st_size, st.st_mtime_ns, {"path": first})
    assert source.read_bytes(first) == (lib / "a" / "x.png").read_bytes()
    os.remove(first)
    assert [i.id for i in source.items()] == [str(lib / "b.PNG")]
    with pytest.raises(FileNotFoundError):
        source.read_bytes(first)
    with pytest.raises(ValueError, match="unknown photo source"):
        open_source(str(lib), kind="nope")


def test_load_photo_reads_through_a_source_whose_ids_are_not_paths():
    class Memory(PhotoSource):
        kind = "memory"
        photos = {"mem://1": _png((80, 60))}

        def list_ids(self):
            return sorted(self.photos)

        def item(self, item_id):
            return SourceItem(item_id, len(self.photos[item_id]), 0)

        def read_bytes(self, item_id):
            try:
                return self.photos[item_id]
            except KeyError:
                raise FileNotFoundError(item_id) from None

        def describe(self):
            return {"kind": self.kind}

    source = Memory()
    photo = load_photo("mem://1", "x", 640, read=source.read_bytes)
    assert not photo.error and (photo.width, photo.height) == (80, 60)
    gone = load_photo("mem://2", "x", 640, read=source.read_bytes)
    assert gone.error == "file vanished before it could be read"
