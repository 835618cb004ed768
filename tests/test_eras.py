"""eras: one identity split by era, from embeddings and the EXIF capture dates written into
copies of the test photos; the capture-date side file; eras extend; undo."""
from __future__ import annotations

import json

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
