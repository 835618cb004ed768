"""eras: one identity split by era, from embeddings and the EXIF capture dates written into
copies of the test photos; the capture-date side file; eras extend; undo."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest


# ---- the rule, on synthetic vectors ---------------------------------------------------------
def _unit(deg: float) -> list[float]:
    return [float(np.cos(np.radians(deg))), float(np.sin(np.radians(deg))), 0.0]


@pytest.mark.unit
def test_a_fragment_joins_only_its_nearest_anchor_when_near_and_of_its_years():
    """Two anchors 90 degrees apart; fragments near anchor 0 in distance but of another
    decade, near in both, undated, near anchor 1 only by the second-nearest..."""
    from facesets.steps.eras import attach_fragments

    anchors = np.array([_unit(0), _unit(90)])
    years = [1995, 2015]
    frags = np.array([_unit(10),    # near anchor 0, same years: joins it
                      _unit(12),    # near anchor 0, 2014: 19 years apart, stays out
                      _unit(8),     # near anchor 0, undated: cannot pass the year test
                      _unit(45),    # halfway: too far from both (cos 45 = 0.707 -> 0.29)
                      _unit(80)])   # near anchor 1, its years
    a = attach_fragments(anchors, years, frags, [1998, 2014, None, 1996, 2016],
                         attach=0.25, window=5)
    assert [x.joined for x in a] == [True, False, False, False, True]
    assert [x.nearest for x in a] == [0, 0, 0, 0, 1]
    assert a[1].why == "year 2014 vs anchor's 1995: more than 5 years apart"
    assert a[2].why == "no dated photo"
    assert "> 0.25" in a[3].why
    # the year test looks at the nearest anchor only: a fragment of 2015 nearest anchor 0
    # does not fall back to anchor 1 even though its years match there
    b = attach_fragments(anchors, years, np.array([_unit(30)]), [2015], 0.5, 5)
    assert b[0].nearest == 0 and not b[0].joined
    # an anchor without a dated photo takes no fragment
    c = attach_fragments(anchors, [None, 2015], np.array([_unit(5)]), [1995], 0.5, 5)
    assert not c[0].joined and "anchor has no dated photo" in c[0].why
    # no anchors at all
    assert attach_fragments(np.zeros((0, 3)), [], np.array([_unit(5)]), [1995], 0.5, 5
                            )[0].why == "no anchor"


@pytest.mark.unit
def test_era_years_are_the_5th_to_95th_percentile_and_the_most_frequent_year():
    from facesets.steps.eras import dominant_year, year_span

    ys = [2001] * 30 + [2002] * 30 + [2003] * 39 + [1970]   # one misdated scan in 100
    assert year_span(ys) == (2001, 2003)
    assert dominant_year(ys) == 2003
    assert dominant_year([1999, 2000, None, 1999, 2000]) == 1999   # tie: the earliest
    assert year_span([None, None]) is None and dominant_year([None]) is None
    assert year_span([1990, None, 1994]) == (1990, 1994)


@pytest.mark.unit
def test_era_names_and_their_pattern():
    from facesets.formats.eras import ERA_NAME, era_name
    from facesets.formats.manifest import FACESET_NAME

    taken: set[str] = set()
    assert era_name("faceset_007", (1990, 1999), taken) == "faceset_007_1990-1999"
    assert era_name("faceset_007", (1990, 1999), taken) == "faceset_007_1990-1999_2"
    assert era_name("faceset_007", None, taken) == "faceset_007_undated"
    for n in taken:
        assert FACESET_NAME.fullmatch(n) and ERA_NAME.fullmatch(n)["source"] == "faceset_007"
    assert not ERA_NAME.fullmatch("faceset_007") and not ERA_NAME.fullmatch("faceset_007_x")
    assert not FACESET_NAME.fullmatch("faceset_007_1990-1999/../x")


@pytest.mark.unit
def test_exif_dates_are_parsed_or_refused():
    from facesets.formats.eras import parse_exif_date

    assert parse_exif_date("1997:06:21 14:02:11") == "1997-06-21T14:02:11"
    assert parse_exif_date(b"2004:01:02 03:04:05\x00") == "2004-01-02T03:04:05"
    assert parse_exif_date("2004-01-02") == "2004-01-02T00:00:00"
    for bad in ("0000:00:00 00:00:00", "    :  :     :  :  ", "", None, 5, "1800:01:01",
                "2999:01:01 00:00:00", "2004:13:01 00:00:00"):
        assert parse_exif_date(bad) is None, bad


@pytest.mark.unit
def test_the_dates_side_file_is_checked_on_read(tmp_path):
    from facesets.formats.eras import dates_path, load_dates, write_dates
    from facesets.formats.manifest import ManifestError

    path = dates_path(tmp_path / "c.npz")
    assert path.name == "c.npz.dates.json" and load_dates(path) == {}
    good = {"a" * 64: "1999-12-31T23:59:59", "b" * 64: None}
    write_dates(path, good)
    assert load_dates(path) == good
    body = json.loads(path.read_text())
    for field, value, needle in [
            ("dates", {"../x": None}, "is not a sha256"),
            ("dates", {"a" * 64: "yesterday"}, "is not a date"),
            ("dates", {"a" * 64: "1700-01-01T00:00:00"}, "is not a date"),
            ("dates", [1, 2], "not an object"),
            ("version", 99, "newer than this face-sets"),
            ("format", "face-sets/swap", "not a face-sets/capture-dates file")]:
        path.write_text(json.dumps(dict(body, **{field: value})))
        with pytest.raises(ManifestError, match=needle) as e:
            load_dates(path)
        assert str(path) in str(e.value)



@pytest.mark.unit
def test_the_eras_sections_of_the_top_manifest_are_checked_on_read(tmp_path):
    from facesets.formats.eras import check_eras_sections
    from facesets.formats.manifest import ManifestError

    era = {"name": "faceset_001_1990-1999", "folder": "faceset_001_1990-1999", "faces": 30,
           "dominant_year": 1995, "thin": False, "centroid": [0.6, 0.8]}
    rec = {"run": "0001-abcdef01", "source": "faceset_001", "centroid": [1.0, 0.0],
           "parameters": {"recover": 0.55, "min_anchor": 20}, "eras": [era]}
    path = tmp_path / "manifest.json"
    assert check_eras_sections({"eras": [rec]}, path) == [rec]
    for change, field in [
            ({"folder": "../../etc"}, "eras[0].eras[0].folder"),
            ({"folder": "_thin/faceset_002_1990-1999"}, "eras[0].eras[0].folder"),
            ({"name": "faceset_002_1990-1999", "folder": "faceset_002_1990-1999"},
             "eras[0].eras[0].name"),
            ({"name": "faceset_001/../x"}, "eras[0].eras[0].name"),
            ({"centroid": [float("nan")]}, "eras[0].eras[0].centroid"),
            ({"thin": "no"}, "eras[0].eras[0].thin")]:
        bad = {"eras": [dict(rec, eras=[dict(era, **change)])]}
        with pytest.raises(ManifestError, match=re.escape(field)) as e:
            check_eras_sections(bad, path)
        assert str(path) in str(e.value)
    with pytest.raises(ManifestError, match=re.escape("eras[0].parameters.min_anchor")):
        check_eras_sections({"eras": [dict(rec, parameters={"min_anchor": "20"})]}, path)
    with pytest.raises(ManifestError, match=re.escape("thin_eras[0].folder")):
        check_eras_sections({"thin_eras": [{"name": "faceset_001_undated",
                                            "folder": "/tmp/x"}]}, path)
    # occlusion apply's thin facesets share the section, in their own shape
    thin = {"to": "_thin", "moved_to": "_thin/faceset_003", "run": "0002-abcdef02",
            "pruned": 2, "survivors": 3, "name": "faceset_003"}
    check_eras_sections({"thin_eras": [thin]}, path)
    with pytest.raises(ManifestError, match=re.escape("thin_eras[0].moved_to")):
        check_eras_sections({"thin_eras": [dict(thin, moved_to="_thin/../../etc")]}, path)


# ---- end to end, on copies of the test photos with EXIF dates written by the test --------
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from conftest import FACES, PACK, copy_cache, needs_shared, run_cli  # noqa: E402

# one "person" seen in two decades: Schroeder's photos play the 1990s, Chirac's the 2010s
# (testpack_s sees them ~0.8 apart, as buffalo_l would see a face 20 years on); three of
# Bush's photos of 2003 are a fragment near neither; Rumsfeld is another faceset
NINETIES, TENS, FRAGMENT, OTHER = ("Gerhard_Schroeder", "Jacques_Chirac", "George_W_Bush",
                                   "Donald_Rumsfeld")
# testpack_s has no built-in eras thresholds; the LFW faces are small: gates and sizes
# lowered for them (the rule is the same)
ERAS = ["--recover-threshold", "1.0", "--tighten-threshold", "0.9", "--split-threshold",
        "0.65", "--attach-threshold", "0.5", "--min-anchor", "5", "--min-era-faces", "5",
        "--min-short", "40", "--min-blur", "0", "--min-det-score", "0.5", "--no-progress"]
EXIF_IFD, DATE_TIME_ORIGINAL = 0x8769, 0x9003


def dated_copy(src: Path, dest: Path, year: int | None, month: int = 6) -> None:
    """A copy of a test photo with EXIF DateTimeOriginal set (none when ``year`` is None)."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        exif = Image.Exif()
        if year is not None:
            exif.get_ifd(EXIF_IFD)[DATE_TIME_ORIGINAL] = f"{year}:{month:02d}:15 12:00:00"
        im.save(dest, exif=exif, quality=95)


def photos_of(person: str) -> list[Path]:
    return sorted((FACES / person).iterdir())


def build_library(root: Path) -> dict:
    """Photos with dates, their cache, and a swap-ready folder whose faceset_000 mixes the
    1990s, the 2010s and the 2003 fragment (one refine entry), faceset_001 someone else."""
    src = root / "photos"
    nineties = photos_of(NINETIES)
    for k, f in enumerate(nineties[:7]):     # 1994..1998, the last two undated
        dated_copy(f, src / "a" / f.name, 1994 + k if k < 5 else None)
    for k, f in enumerate(photos_of(TENS)):  # 2011..2015
        dated_copy(f, src / "b" / f.name, 2011 + k // 2)
    for f in photos_of(FRAGMENT)[:3]:
        dated_copy(f, src / "c" / f.name, 2003)
    for f in photos_of(OTHER)[:5]:
        dated_copy(f, src / "d" / f.name, None)
    later = root / "later_photos"            # embedded later, for eras extend
    for f in nineties[7:9]:
        dated_copy(f, later / "round1" / f.name, 1997)
    dated_copy(nineties[9], later / "round2" / nineties[9].name, 2019)
    cache = root / "c.npz"
    run_cli("embed", src, cache, *PACK, "--no-progress")
    run_cli("refine", cache, root / "refined", "--initial-threshold", "0.65",
            "--merge-threshold", "0.5", "--outlier-threshold", "0.65", "--min-faces", "3",
            "--min-short", "40", "--min-blur", "0", "--min-det-score", "0.5", "--link",
            "symlink")
    m = json.loads((root / "refined" / "refine_manifest.json").read_text())
    folder = {e["name"]: Path(e["faces"][0]["path"]).parent.name for e in m["facesets"]}
    by = {folder[e["name"]]: e for e in m["facesets"]}
    assert sorted(by) == ["a", "b", "c", "d"], folder
    mixed = by["a"]["faces"] + by["b"]["faces"] + by["c"]["faces"]
    m["facesets"] = [dict(by["a"], name="faceset_000", faces=mixed, face_count=len(mixed)),
                     dict(by["d"], name="faceset_001")]
    (root / "mixed.json").write_text(json.dumps(m))
    out = root / "swap"
    run_cli("export-swap", cache, root / "mixed.json", out, "--swap-outlier-threshold", "0.95",
            "--min-face-short", "20", *PACK, "--no-progress")
    return {"root": root, "cache": cache, "swap": out, "src": src, "later": later}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> dict:
    """Read-only: copy it before changing it."""
    needs_shared()
    return build_library(tmp_path_factory.mktemp("eras"))


def load(p: Path) -> dict:
    return json.loads(p.read_text())


def eras_run(lib: dict, out: Path, *extra, check: bool = True):
    return run_cli("eras", lib["cache"], "faceset_000", "--into", out, *ERAS, *PACK, *extra,
                   check=check)


def test_eras_splits_by_decade_sends_the_thin_era_to_thin_and_undo_restores(library,
                                                                           tmp_path):
    from library_check import check_library
    from test_identity_ops import tree, without_runs

    lib = dict(library, cache=copy_cache(library["cache"], tmp_path))
    out = tmp_path / "swap"
    shutil.copytree(library["swap"], out, symlinks=True)
    before, top0 = tree(out), load(out / "manifest.json")
    dates = Path(str(lib["cache"]) + ".dates.json")
    assert not dates.exists()

    dry = eras_run(lib, out, "--dry-run")
    assert tree(out) == before, "a dry run changes nothing in SWAP_READY"
    # the probe: the pairwise histogram, the sizes at five distances, years per sub-cluster
    assert "pairwise distances" in dry.stdout and dry.stdout.count("\n  sub-clusters at ") == 5
    assert "10 faces, years 2011-2015" in dry.stdout and "7 faces, years 1994-1998" in dry.stdout
    assert "20 photos, 18 dated, 2 undated; 0 from" in dry.stdout and "20 read now" in dry.stdout
    assert "5 held by other facesets left out" in dry.stdout     # faceset_001's faces
    assert "fragment of 3 faces (dominant year 2003): an era of its own" in dry.stdout
    assert "era faceset_000_2003-2003: 3 faces (fragment)" in dry.stdout and "-> _thin/" \
        in dry.stdout
    # the dates are kept beside the cache: a re-run with other parameters reads no photo
    # (here it could not: the photos are gone) and finds the same years
    assert len(load(dates)["dates"]) == 20
    away = tmp_path / "photos_away"
    lib["src"].rename(away)
    try:
        again = eras_run(lib, out, "--dry-run", "--attach-threshold", "0.3")
    finally:
        away.rename(lib["src"])
    assert "20 from" in again.stdout and "0 read now" in again.stdout
    assert "unreadable" not in again.stdout and "10 faces, years 2011-2015" in again.stdout

    # eras extend before any eras: refused, naming the command that makes them
    none = run_cli("faceset", "eras", "extend", out, lib["cache"], "faceset_000", *PACK,
                   check=False)
    assert none.returncode == 2 and tree(out) == before, none.stderr
    assert (f"run `faceset eras build {out.resolve()} {lib['cache']} faceset_000` first"
            in none.stderr), none.stderr

    eras_run(lib, out)
    check_library(out)
    top = load(out / "manifest.json")
    rec = top["eras"][-1]
    eras = {e["name"]: e for e in rec["eras"]}
    assert sorted(eras) == ["faceset_000_1994-1998", "faceset_000_2003-2003",
                            "faceset_000_2011-2015"]
    assert [e["name"] for e in top["facesets"]] == ["faceset_000", "faceset_001",
                                                    "faceset_000_1994-1998",
                                                    "faceset_000_2011-2015"]
    assert eras["faceset_000_2003-2003"]["thin"] and \
        [t["folder"] for t in top["thin_eras"]] == ["_thin/faceset_000_2003-2003"]
    assert (out / "_thin" / "faceset_000_2003-2003" / "faceset_000_2003-2003_all.fsz").is_file()
    # each era holds the faces of its own decade only, the undated ones where they look alike
    src = load(out / "faceset_000" / "manifest.json")
    assert src == load(library["swap"] / "faceset_000" / "manifest.json"), "source untouched"
    folder_of = {f["key"]: Path(f["path"]).parent.name for f in src["faces"]}
    for name, want in [("faceset_000_1994-1998", "a"), ("faceset_000_2011-2015", "b"),
                       ("_thin/faceset_000_2003-2003", "c")]:
        m = load(out / name / "manifest.json")
        assert {folder_of[f["key"]] for f in m["faces"]} == {want}, name
    assert eras["faceset_000_1994-1998"]["undated"] == 2 and \
        eras["faceset_000_1994-1998"]["faces"] == 7
    assert eras["faceset_000_2011-2015"]["dominant_year"] == 2011
    refused = eras_run(lib, out, check=False)
    assert refused.returncode == 2 and "split into eras already" in refused.stderr
    # the refusal names, in today's spelling, the run's undo and an extend that runs as given
    assert f"`library undo {out.resolve()} {rec['run']}`" in refused.stderr, refused.stderr
    hint = re.search(r"`(faceset eras extend [^`]+)`", refused.stderr)
    assert hint, refused.stderr
    assert hint.group(1).split()[3:] == [str(out.resolve()), str(lib["cache"]), "faceset_000"]
    kept = tree(out)
    extend = run_cli(*hint.group(1).split(), *PACK, "--dry-run", "--no-progress")
    assert "eras extend" in extend.stdout and tree(out) == kept
    # consolidate never merges the eras back into one faceset (they are one person)
    merge = run_cli("consolidate", out, "--group-threshold", "0.95", "--merge-threshold",
                    "0.95", "--dry-run")
    assert "consolidate (dry run, nothing changed): 2 facesets," in merge.stdout
    assert "faceset_000_" not in merge.stdout, merge.stdout

    run_cli("undo", out)
    check_library(out)
    assert without_runs(load(out / "manifest.json")) == without_runs(top0)
    assert {k: v for k, v in tree(out).items() if k.split("/")[0] not in (".runs", "_added")
            and k != "manifest.json"} == {k: v for k, v in before.items()
                                          if k != "manifest.json"}
    # the thin era went back where it was built, and undo left no empty _thin/ behind
    assert not (out / "_thin").exists()


def test_eras_says_why_no_era_was_exported(library, tmp_path):
    lib = dict(library, cache=copy_cache(library["cache"], tmp_path))
    out = tmp_path / "swap"
    shutil.copytree(library["swap"], out, symlinks=True)
    (out / "faceset_000" / "NAME.txt").write_text("Ada Lovelace\n")   # its label
    r = eras_run(lib, out, "--min-era-faces", "11")
    assert "eras: 0 eras exported: none; 3 to _thin/" in r.stdout
    # the source is named by its label in the head line and the plan
    assert "eras faceset_000 (Ada Lovelace): recover " in r.stdout, r.stdout
    assert " of faceset_000 (Ada Lovelace)'s centroid (" in r.stdout
    # the reason of each, printed (not only in the manifest): what passed the export's gates
    for era, faces in [("faceset_000_1994-1998", 7), ("faceset_000_2011-2015", 10),
                       ("faceset_000_2003-2003", 3)]:
        assert f"era {era}: {faces} of its {faces} faces passed the export's gates, under " \
            "--min-era-faces 11 -> _thin/" in r.stdout, r.stdout
    assert r.stdout.index("passed the export's gates") < r.stdout.index("0 eras exported")


def test_eras_extend_slots_later_photos_into_their_era_by_distance_and_year(library,
                                                                          tmp_path):
    from library_check import check_library
    from test_identity_ops import tree

    lib = dict(library, cache=copy_cache(library["cache"], tmp_path))
    out = tmp_path / "swap"
    shutil.copytree(library["swap"], out, symlinks=True)
    eras_run(lib, out)
    nineties = out / "faceset_000_1994-1998" / "manifest.json"
    old = load(nineties)
    # two more photos of the 1990s face, dated 1997, embedded later
    run_cli("embed", lib["later"] / "round1", lib["cache"], *PACK, "--no-progress")
    ext = ["eras", "extend", lib["cache"], "faceset_000", "--into", out, *PACK, "--no-progress"]
    before = tree(out)
    dry = run_cli(*ext, "--dry-run")
    assert "fragment of 2 faces (dominant year 1997): joins faceset_000_1994-1998" in dry.stdout
    assert "20 already in its eras" in dry.stdout and tree(out) == before
    run_cli(*ext)
    check_library(out)
    new = load(nineties)
    added = [f for f in new["faces"] if "round1" in f["path"]]
    assert len(new["faces"]) == len(old["faces"]) + 2 and len(added) == 2
    assert [f["rank"] for f in new["faces"]] == list(range(len(new["faces"])))
    scores = [f["score"] for f in new["faces"]]
    assert scores == sorted(scores, reverse=True), "re-ranked by score"
    top = load(out / "manifest.json")
    listed = {e["name"]: e["faces"] for e in top["facesets"]}
    assert listed["faceset_000_1994-1998"] == 9 and listed["faceset_000_2011-2015"] == 10
    assert top["eras"][-1]["extended"][0]["added"] == {"faceset_000_1994-1998": 2}
    # the same face ten years too late: near enough, but not of the era's years
    run_cli("embed", lib["later"] / "round2", lib["cache"], *PACK, "--no-progress")
    late = run_cli(*ext)
    assert "(dominant year 2019): left out (year 2019 vs anchor's 1997: more than 5 years " \
        "apart)" in late.stdout and "nothing changed" in late.stdout
    assert load(nineties) == new
    run_cli("undo", out)
    check_library(out)
    assert load(nineties)["faces"] == old["faces"]


def test_kill_during_eras_leaves_a_library_that_loads_and_a_rerun_finishes(library, tmp_path):
    """kill -9 right after a commit of the crop build, and in the middle of the run's moves:
    `history` still reads the library, a re-run finishes, the result equals an
    uninterrupted run (bench/kill_campaign.py can try every commit)."""
    from killharness import KillHarness, Scenario
    from test_identity_ops import _kill_and_rerun

    def build(w: Path) -> None:
        shutil.copytree(library["swap"], w / "swap", symlinks=True)
        copy_cache(library["cache"], w)

    scenario = Scenario("eras", build, lambda w: ["eras", w / "c.npz", "faceset_000", "--into",
                                                  w / "swap", *ERAS, *PACK],
                        caches=("c.npz",))
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    h.run_reference()
    build_commit = next(k for k, c in enumerate(h.commits, 1) if "/_added/" in c)
    move = next(k for k, c in enumerate(h.commits, 1) if " -> " in c)
    _kill_and_rerun(h, scenario, [build_commit, move + 1])


def test_kill_during_eras_extend_and_a_rerun_finishes(library, tmp_path):
    """eras extend killed at a spread of its commits (first, last, the first of each kind of
    file, evenly spaced ones): the library still loads, a re-run
    finishes it with the same faces in the same eras, nothing half-written is left, and
    once the crops were built the re-run resumes the killed run (same run id) instead of
    starting over. (Byte equality with an uninterrupted run does not hold here: the crop
    build's manifest records when it was made, and the run id digests it.)"""
    from killharness import KILLED, KillHarness, Scenario, is_leftover, sample_points
    from library_check import check_library

    def build(w: Path) -> None:
        shutil.copytree(library["swap"], w / "swap", symlinks=True)
        copy_cache(library["cache"], w)
        run_cli("eras", w / "c.npz", "faceset_000", "--into", w / "swap", *ERAS, *PACK)
        run_cli("embed", library["later"] / "round1", w / "c.npz", *PACK, "--no-progress")

    def era_faces(w: Path) -> dict:
        top = load(w / "swap" / "manifest.json")
        return {e["name"]: sorted(f["key"] for f in load(w / "swap" / e["manifest"])["faces"])
                for e in top["facesets"]}

    def run_ids(w: Path) -> list[str]:
        return [e["id"] for e in load(w / "swap" / "manifest.json")["runs"]]

    def started(w: Path) -> set[str]:       # run folders, finished or being written
        return {p.name.strip(".").split(".")[0] for p in (w / "swap" / ".runs").iterdir()
                if p.is_dir()}   # .runs/report-pending is no run

    scenario = Scenario("eras-extend", build,
                        lambda w: ["eras", "extend", w / "c.npz", "faceset_000", "--into",
                                   w / "swap", *PACK, "--no-progress"], caches=("c.npz",))
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    n = h.run_reference()
    want, runs_before = era_faces(h.w), len(run_ids(h.w)) - 1
    assert n >= 8 and len(want["faceset_000_1994-1998"]) == 9, h.commits
    # a spread of the commits, one of each kind among them (every one: kill_campaign's way)
    for k in sample_points(h.commits, 6):
        h.reset()
        assert h.run(kill_at=k, tag=f"kill{k}").rc == KILLED, k
        killed_runs = started(h.w) - set(run_ids(h.w)[:runs_before])
        assert "history:" in run_cli("history", h.w / "swap").stdout
        again = h.run(tag=f"rerun{k}")
        assert again.rc == 0, (k, again.tail())
        check_library(h.w / "swap")
        assert era_faces(h.w) == want, k
        ids = run_ids(h.w)
        assert len(ids) == runs_before + 1, (k, ids)
        if killed_runs:
            assert killed_runs == {ids[-1]}, (k, killed_runs, ids)   # resumed, not restarted
        left = [p for p in (h.w / "swap").rglob("*") if is_leftover(p.name)]
        assert not left, (k, left)
