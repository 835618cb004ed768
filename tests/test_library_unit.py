"""The typed faceset, the heavy-loss line and the dropped[] checks, without photos or a model:
real manifest files written and read back through the validating loaders."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from facesets.core.library import Faceset, heavy_loss
from facesets.core.swapexport import GATE_FLAGS
from facesets.formats.manifest import (SWAP_FACESET_MANIFEST, ManifestError, dropped_entry,
                                       load_manifest)

pytestmark = pytest.mark.unit


def face(rank: int, score: float) -> dict:
    return {"rank": rank, "file": f"faces/{rank:03d}.png", "key": f"s{rank}:0",
            "sha256": f"s{rank}", "path": f"/photos/p{rank}.jpg", "score": score}


def body(**over) -> dict:
    m = {"format": SWAP_FACESET_MANIFEST, "version": 1, "name": "faceset_004", "top_n": 2,
         "label": "Ada Lovelace", "bundle_stem": "Ada_Lovelace",
         "faces": [face(0, 0.9), face(1, 0.8), face(2, 0.7)], "dropped_version": 1,
         "dropped": [dropped_entry(face(9, 0.1), "outlier", 0.61, 0.5)],
         "summary": {"faces_in": 4, "kept": 3, "dropped": {"outlier": 1}}}
    m.update(over)
    return m


def write(tmp_path: Path, m: dict) -> Path:
    d = tmp_path / m["name"]
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_a_faceset_names_its_bundles_by_its_stem_and_its_operations_return_new_bodies(
        tmp_path):
    fs = Faceset.load(write(tmp_path, body()))
    assert fs.bundle_names() == {"top": "Ada_Lovelace_top2.fsz", "all": "Ada_Lovelace_all.fsz"}
    before = json.dumps(fs.body, sort_keys=True)

    dropped = fs.dropping({"faces/001.png": "faces/_dropped/001.png"}, "review", "r1")
    assert [f["file"] for f in dropped["faces"]] == ["faces/000.png", "faces/002.png"]
    assert dropped["dropped"][-1] | {} == dict(face(1, 0.8), reason="review", run="r1",
                                               moved_to="faces/_dropped/001.png")
    assert dropped["summary"]["dropped"] == {"outlier": 1, "review": 1}
    assert dropped["summary"]["kept"] == 2
    assert dropped["bundles"] == {"top": "Ada_Lovelace_top2.fsz", "top_count": 2,
                                  "all": "Ada_Lovelace_all.fsz", "all_count": 2}

    added = fs.adding([dict(face(7, 0.85), file="faces/003.png")])
    assert [(f["rank"], f["file"]) for f in added["faces"]] == [
        (0, "faces/000.png"), (1, "faces/003.png"), (2, "faces/001.png"), (3, "faces/002.png")]
    assert added["bundles"]["all_count"] == 4

    gone = fs.without({"faces/000.png"})
    assert [f["rank"] for f in gone["faces"]] == [1, 2] and gone["dropped"] == fs.dropped
    assert json.dumps(fs.body, sort_keys=True) == before, "the loaded body never changes"
    # a faceset without a usable stem is named after itself
    plain = Faceset.of(body(bundle_stem="../x"))
    assert plain.bundle_names()["top"] == "faceset_004_top2.fsz"


def test_heavy_loss_names_the_gates_and_the_flag_values_that_keep_every_face():
    dropped = [dropped_entry({}, "outlier", 0.61, 0.5), dropped_entry({}, "outlier", 0.58, 0.5),
               dropped_entry({}, "small", 41.7, 60), dropped_entry({}, "near_duplicate", 0.2,
                                                                   None)]
    line = heavy_loss("export-swap", "faceset_004", 10, dropped, GATE_FLAGS)
    assert line.startswith("export-swap: faceset_004 lost 3 of 10 faces (30%) to its gates "
                           "(outlier 2, small 1)")
    assert "--swap-outlier-threshold 0.61 or more (now 0.5)" in line
    assert "--min-face-short 41.7 or less (now 60)" in line
    # a fifth exactly, or near-duplicates only (no flag keeps them), is not a loss to report
    assert heavy_loss("x", "f", 10, dropped[:2], GATE_FLAGS) is None
    assert heavy_loss("x", "f", 1, dropped[3:], GATE_FLAGS) is None
    assert heavy_loss("x", "f", 0, [], GATE_FLAGS) is None


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(dropped_version=2), "dropped_version"),
    (lambda m: m["dropped"][0].update(value="far"), "dropped[0].value"),
    (lambda m: m["dropped"][0].update(limit=[1]), "dropped[0].limit"),
    (lambda m: m["dropped"][0].update(path=5), "dropped[0].path"),
    (lambda m: m["dropped"][0].pop("reason"), "dropped[0].reason"),
])
def test_a_bad_dropped_entry_is_one_error_naming_the_file_and_field(tmp_path, change, field):
    m = body()
    change(m)
    d = write(tmp_path, m)
    with pytest.raises(ManifestError, match=rf"{re.escape(str(d / 'manifest.json'))}: "
                                            rf"{re.escape(field)} "):
        load_manifest(d / "manifest.json", SWAP_FACESET_MANIFEST)


def test_values_are_finite_or_null():
    e = dropped_entry({"key": "k"}, "several_faces", float("nan"), None)
    assert e == {"key": "k", "reason": "several_faces", "value": None, "limit": None}
    assert dropped_entry({}, "outlier", 0.123456, 0.5)["value"] == 0.1235
