"""formats/swapset.py's caption of what made a faceset and its label, on hostile manifests
(the overview page shows them; test_identity_new checks them in Chromium)."""
from __future__ import annotations

import pytest

from facesets.formats.swapset import faceset_label, faceset_origin

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("manifest, caption", [
    ({"source_faceset": "faceset_004"}, "from refine faceset_004"),
    ({"source_faceset": ""}, ""),
    ({}, ""),
    # an imported faceset's source_faceset is its label: its added_by wins
    ({"source_faceset": "Ada", "added_by": {"step": "import-folders",
                                             "source": {"folder": "/p/sorted/Ada/"}}},
     "added by import-folders from Ada"),
    ({"added_by": {"step": "discover", "source": {"src_root": "/x", "cluster": 3}}},
     "added by discover"),
    ({"added_by": {"step": "eras", "source": "not an object"}}, "added by eras"),
    ({"added_by": {"step": "<script>", "source": {}}}, "added by another step"),
    ({"added_by": ["import-folders"]}, "added by another step"),
    ({"added_by": {"step": "import-folders", "source": {"folder": 7}}},
     "added by import-folders"),
    ({"added_by": {"step": "import-folders", "source": {"folder": "C:\\p\\Bo\nb"}}},
     "added by import-folders from Bo b"),
    # a part split made keeps its original's source_faceset (a label, for an imported one)
    ({"source_faceset": "Ada", "split_from": "faceset_017"}, "split from faceset_017"),
    ({"source_faceset": "faceset_004", "split_from": "../x"}, "from refine faceset_004"),
    ({"split_from": 17}, ""),
    # consolidate names the facesets it merged in (its history entry); others ignored
    ({"source_faceset": "faceset_004", "history": [
        {"step": "consolidate", "merged": ["faceset_003", "../etc", 5]},
        {"step": "drop-faces", "merged": ["faceset_009"]},
        {"step": "consolidate", "merged": ["faceset_008"]}, "junk"]},
     "from refine faceset_004 · merged in faceset_003, faceset_008"),
    ({"added_by": {"step": "eras", "source": {}},
      "history": [{"step": "consolidate", "merged": ["faceset_002"]}]},
     "added by eras · merged in faceset_002"),
    ({"history": [{"step": "consolidate", "merged": "faceset_002"}]}, ""),
    ({"history": "not a list"}, ""),
])
def test_origin_caption(manifest, caption):
    assert faceset_origin(manifest) == caption


def test_label_is_one_bounded_line_or_nothing():
    assert faceset_label({"label": "  Ada\n Lovelace "}) == "Ada Lovelace"
    assert faceset_label({"label": "x" * 5000}) == "x" * 200
    assert faceset_label({"label": 3}) == faceset_label({}) == ""
