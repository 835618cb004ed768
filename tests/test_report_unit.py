"""The report page and the curate step's checks, without photos or a model."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from facesets.formats.report import Tile, place_tiles, render_html, sheet_name
from facesets.steps.curate import clean_name

pytestmark = pytest.mark.unit


class Urls(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("href", "src") and v]


def cards(tmp_path, title: str):
    tiles = [Tile(key=f"k{i}", png=tmp_path / "missing.png", label=f"#{i + 1}")
             for i in range(12)]
    return [{"name": "faceset_000", "title": title, "kept": 12, "dropped": {"outlier": 1},
             "mapping": "from refine faceset_004", "tiles": tiles, "shown": 10,
             "links": [("folder", "faceset_000/"), ("all", "faceset_000/a b#.fsz")]}]


def test_page_is_self_contained_and_escapes_what_it_reads(tmp_path):
    cs = cards(tmp_path, '<script>alert(1)</script> "Bob"')
    used = place_tiles(tmp_path, cs)
    assert len(used) == 1 and (tmp_path / "_thumbs" / next(iter(used))).is_file()
    page = render_html("face-sets/swap", cs, {"title": "t", "facts": ["1 faceset"]}, "out")
    assert "<script>" not in page and "&lt;script&gt;" in page
    p = Urls()
    p.feed(page)
    assert p.urls and not [u for u in p.urls if re.match(r"^[a-z][a-z0-9+.-]*:|^//", u, re.I)]
    assert "faceset_000/a%20b%23.fsz" in page          # a file name stays one relative link
    assert page.count("<figure>") == 10 and "+2 more" in page


def test_sheet_names_follow_content_and_sheets_are_written_once(tmp_path):
    a = [Tile(key="k1", bbox=[1, 2, 3, 4]), Tile(key="k2", bbox=[1, 2, 3, 4])]
    assert sheet_name(a) == sheet_name([Tile(key="k1", bbox=[1, 2, 3, 4]),
                                        Tile(key="k2", bbox=[1, 2, 3, 4])])
    assert sheet_name(a) != sheet_name(a[::-1])
    cs = [{"tiles": a}]
    (name,) = place_tiles(tmp_path, cs)
    sheet = tmp_path / "_thumbs" / name
    data, mtime = sheet.read_bytes(), sheet.stat().st_mtime_ns
    place_tiles(tmp_path, [{"tiles": a}])
    assert sheet.stat().st_mtime_ns == mtime and sheet.read_bytes() == data


@pytest.mark.parametrize("bad", ["", "   ", "# comment", "a\x00b", "x" * 201, 5])
def test_a_name_is_one_printable_line(bad):
    with pytest.raises(ValueError):
        clean_name(bad)


def test_a_name_is_trimmed_to_one_line():
    assert clean_name("  Ada \n Lovelace ") == "Ada Lovelace"


def test_the_facts_count_facesets_moved_out_masked_and_thin_too(tmp_path):
    """A swap-ready library whose occlusion run moved facesets to _masked/ and _thin/ (and
    eras left thin, consolidate merged, a quarantine): no card shows them, so the facts
    count each section, and a library without them says nothing of them."""
    import json  # noqa: PLC0415

    from facesets.formats.report import library_model  # noqa: PLC0415
    top = {"format": "face-sets/swap", "version": 1, "facesets": [], "summary": {},
           "masked": [{"name": "faceset_001", "to": "_masked",
                       "moved_to": "_masked/faceset_001"},
                      {"name": "faceset_002", "to": "_masked",
                       "moved_to": "_masked/faceset_002"}],
           "thin_eras": [{"name": "faceset_003", "to": "_thin", "moved_to": "_thin/faceset_003"}],
           "merged": [{"into": "faceset_004", "merged": ["faceset_005", "faceset_006"]}],
           "quarantined": [{"name": "faceset_007"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(top))
    _, _, head = library_model(tmp_path)
    assert head["facts"] == ["0 facesets", "0 faces kept", "merged: 2", "quarantined: 1",
                             "masked: 2", "thin: 1"], head["facts"]
    (tmp_path / "manifest.json").write_text(json.dumps(
        {k: v for k, v in top.items() if k not in ("masked", "thin_eras")}))
    _, _, head = library_model(tmp_path)
    assert not [f for f in head["facts"] if f.startswith(("masked", "thin"))], head["facts"]
