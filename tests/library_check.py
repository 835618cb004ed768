"""The agreement walk of a swap-ready library, run by the identity-operation tests after every
command: every path a manifest names exists, every PNG on disk is named exactly once, and
every bundle holds its faces' PNGs in rank order."""
from __future__ import annotations

import json
from pathlib import Path

from facesets.formats.bundle import read_fsz


def load(p: Path) -> dict:
    return json.loads(p.read_text())


def parked_folders(root: Path) -> list[Path]:
    """Faceset folders an undo parked (``_added/<tag>/faceset_NNN``, ``_split/<tag>/...``):
    the sources of the folder moves of runs that were undone."""
    top = load(root / "manifest.json")
    out = []
    for e in top.get("runs", []):
        if not e.get("undone_by"):
            continue
        rec = load(root / e["folder"] / "run.json")
        for mv in rec["moves"]:
            d = root / mv["from"]
            if d.is_dir() and (d / "manifest.json").is_file():
                out.append(d)
    return out


def check_library(root: Path) -> None:
    """Every path a manifest names exists; every PNG on disk (outside .runs/) is named by
    exactly one manifest entry; every bundle of a faceset with faces holds their PNGs in rank
    order. Manifests walked: the listed facesets, those consolidate merged away, those split
    archived, and the folders an undo parked."""
    top = load(root / "manifest.json")
    named: list[Path] = []
    manifests = [root / e["manifest"] for e in top["facesets"]]
    for e in top["facesets"]:
        for key in ("top_bundle", "all_bundle", "manifest"):
            assert (root / e[key]).is_file(), f"top-level manifest names missing {e[key]}"
    for rec in top.get("merged", []):
        for m in rec["merged"]:
            assert (root / m["moved_to"]).is_dir()
            manifests.append(root / m["moved_to"] / "manifest.json")
    for rec in top.get("split", []):
        assert (root / rec["moved_to"]).is_dir(), rec
        manifests.append(root / rec["moved_to"] / "manifest.json")
    for rec in top.get("quarantined", []):        # curate's quarantine (the review page)
        assert (root / rec["moved_to"]).is_dir(), rec
        manifests.append(root / rec["moved_to"] / "manifest.json")
    manifests += [d / "manifest.json" for d in parked_folders(root)]
    for rec in top.get("thin_eras", []):     # eras too small to use (eras: "folder"), and
        #   facesets the occlusion filter left too thin (occlusion apply: "moved_to"), in _thin/
        manifests.append(root / rec.get("folder", rec.get("moved_to")) / "manifest.json")
    for rec in top.get("masked", []):        # mostly occluded facesets (occlusion apply)
        assert (root / rec["moved_to"]).is_dir(), rec
        manifests.append(root / rec["moved_to"] / "manifest.json")
    # build folders under _added/ (eras extend's keep their manifest, faces moved out or back)
    manifests += sorted(root.glob("_added/*/*/manifest.json"))
    manifests = list(dict.fromkeys(manifests))   # a parked folder may be back in the library
    for rec in top.get("runs", []):
        assert (root / rec["folder"] / "run.json").is_file()
    for path in manifests:
        fs = load(path)
        fdir = path.parent
        for face in fs["faces"]:
            assert (fdir / face["file"]).is_file(), f"{path} names missing {face['file']}"
            named.append(fdir / face["file"])
        for d in fs["dropped"]:
            if "moved_to" in d:
                assert (fdir / d["moved_to"]).is_file(), f"{path}: missing {d['moved_to']}"
                named.append(fdir / d["moved_to"])
        for key in ("top", "all"):
            assert (fdir / fs["bundles"][key]).is_file()
        if fs["faces"]:
            faces = sorted(fs["faces"], key=lambda f: f["rank"])
            assert [d for _, d in read_fsz(fdir / fs["bundles"]["all"]).pngs] == \
                [(fdir / f["file"]).read_bytes() for f in faces], f"{path}: stale bundle"
            assert fs["bundles"]["all_count"] == len(faces)
    on_disk = sorted(p for p in root.rglob("*.png") if ".runs" not in p.relative_to(root).parts)
    assert sorted(named) == on_disk, "every PNG on disk must be named exactly once"
