"""Linkage options (engine/linkage.py) and calibrate's target-precision pick."""
from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import FACES, run_cli
from facesets.core.metrics import Scores, pairwise_scores
from facesets.core.reliability import ReliabilityGates, unreliable_faces
from facesets.core.selection import select_faces
from facesets.engine import (CLUSTER_MERGE_RATIO, LINKAGES, attach_unreliable, cluster_faces,
                             get_engine, merge_centroids, violates_cannot_link)
from facesets.formats.cache import load_cache
from facesets.steps.calibrate import SweepRow, precision_margin, target_pick

# gates that mark a good share of the test faces unreliable (the 150x150 people's faces are
# about 60-70 px), so that the quality option really has faces to attach
STRICT = ReliabilityGates(min_short=75, min_det_score=0.75, min_norm_ratio=0.9)


@pytest.mark.parametrize("linkage,merge_ratio", [("average", CLUSTER_MERGE_RATIO),
                                                 *((lk, 0.0) for lk in LINKAGES
                                                   if lk != "average")])
def test_graph_agrees_with_exact_under_every_option(faces_cache, linkage, merge_ratio):
    cache = load_cache(faces_cache)
    sel = select_faces(cache)
    cl = sel.cannot_link()
    unreliable = unreliable_faces(cache, sel, STRICT)
    assert 0.2 * len(sel) < unreliable.sum() < 0.8 * len(sel)
    for t in (0.55, 0.7):
        exact = cluster_faces(sel.embeddings, t, cl, "exact", linkage=linkage,
                              unreliable=unreliable, merge_ratio=merge_ratio)
        graph = cluster_faces(sel.embeddings, t, cl, "graph", linkage=linkage,
                              unreliable=unreliable, merge_ratio=merge_ratio)
        assert len(np.unique(exact)) < len(exact) - 60     # many faces were grouped
        assert pairwise_scores(graph, exact).f >= 0.99
        assert not violates_cannot_link(exact, cl) and not violates_cannot_link(graph, cl)


@pytest.mark.parametrize("linkage", ["quality", "mutual"])
def test_linkage_options_keep_cannot_link_on_group_photos(group_cache, linkage):
    cache = load_cache(group_cache)
    sel = select_faces(cache)
    cl = sel.cannot_link()
    unreliable = unreliable_faces(cache, sel, ReliabilityGates(min_short=40))
    assert unreliable.any() and not unreliable.all()
    labels = cluster_faces(sel.embeddings, 0.95, cl, "exact", linkage=linkage,
                           unreliable=unreliable)
    assert not violates_cannot_link(labels, cl)
    assert len(np.unique(labels)) < len(labels)


@pytest.mark.unit
def test_unreliable_faces_join_the_cluster_nearest_on_average():
    # two reliable clusters along the axes; unreliable faces near each, one far from both,
    # two of one photo near the same cluster (only the nearer joins), and one barred
    e = np.eye(4, dtype=np.float32)
    x = np.stack([e[0], e[0], e[1], e[1],
                  e[0] * 0.9 + e[2] * 0.3,     # 4: near cluster of e0
                  e[3],                         # 5: far from everything
                  e[1] * 0.9 + e[2] * 0.2,     # 6: near e1 ...
                  e[1] * 0.9 + e[2] * 0.4,     # 7: ... as is its photo-mate, a bit farther
                  e[0] * 0.9 + e[3] * 0.1])    # 8: near e0, but shares a photo with face 0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    core = np.arange(4)
    rest = np.arange(4, 9)
    cl = np.array([[6, 7], [8, 0]])
    labels = attach_unreliable(x, np.array([0, 0, 1, 1]), core, rest, 0.2, cl)
    assert labels[4] == labels[0] != labels[2]
    assert labels[6] == labels[2] and labels[7] != labels[2]
    assert labels[8] != labels[0]
    assert len({labels[5], labels[7], labels[8], labels[0], labels[2]}) == 5
    assert not violates_cannot_link(labels, cl)


@pytest.mark.unit
def test_centroid_merge_along_edges_is_the_exact_merge_over_the_pairs_given():
    # 60 clusters of 5 faces around 20 directions (3 clusters each): with every face pair as
    # a candidate, the merge along edges is the exact centroid clustering; a pair of clusters
    # no face edge joins is never merged, and cannot-link holds at cluster level
    rng = np.random.default_rng(7)
    dirs = rng.normal(size=(20, 64))
    x = np.repeat(dirs, 15, axis=0) + 0.35 * rng.normal(size=(300, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = np.arange(300) // 5

    def exact(c, t, cl):
        return get_engine("exact").cluster(c, t, cl)
    full = np.triu_indices(300, 1)
    want = merge_centroids(x, labels, 0.3, None, exact)
    assert 20 <= len(np.unique(want)) < 60
    assert pairwise_scores(merge_centroids(x, labels, 0.3, None, exact, full), want).f == 1.0
    # edges only inside each block of 15 faces but the last: clusters 57-59 stay apart
    block = np.arange(300) // 15
    inside = block[full[0]] == block[full[1]]
    inside &= block[full[0]] < 19
    some = (full[0][inside], full[1][inside])
    got = merge_centroids(x, labels, 0.3, None, exact, some)
    assert len({got[285], got[290], got[295]}) == 3
    assert pairwise_scores(got[:285], want[:285]).f == 1.0
    cl = np.array([[0, 5]])                 # a face of cluster 0 and one of cluster 1
    got = merge_centroids(x, labels, 0.3, cl, exact, full)
    assert got[0] != got[5] and not violates_cannot_link(got, cl)


@pytest.mark.unit
def test_target_pick_takes_the_most_lenient_threshold_clearing_the_margin():
    def row(t, p, r, grouped):
        out = SweepRow(t, Scores(p, r), Scores(p, r), 1)
        out.grouped = grouped
        return out
    rows = [row(0.4, 1.0, 0.80, 100), row(0.5, 0.999, 0.90, 4000), row(0.6, 0.9965, 0.95, 4500),
            row(0.7, 0.990, 0.99, 5000), row(0.8, 0.95, 1.0, 6000)]
    assert precision_margin(0.995, 4500) == pytest.approx(0.00105, abs=1e-5)
    # 0.9965 clears 0.995 + 0.00105; 0.7 misses the target
    assert target_pick(rows, 0.995, best=3)[0] == 2
    # never more lenient than the best-F threshold
    assert target_pick(rows, 0.995, best=1)[0] == 1
    # 0.999 needs 0.999 + 0.0005 at 4000 faces: only the bare target is met, and said so
    i, margin, note = target_pick(rows, 0.999, best=3)
    assert (i, margin) == (1, 0.0) and "bare target" in note
    assert target_pick(rows, 0.0, best=3)[0] == 3


def test_calibrate_reports_the_recall_its_target_precision_costs(faces_cache):
    out = run_cli("calibrate", faces_cache, FACES, "--target-precision", "0.999").stdout
    line = next(l for l in out.splitlines() if l.startswith("cluster ") and "precision >=" in l)
    m = re.match(r"cluster ([0-9.]+) for pairwise precision >= 0.999 .* P ([0-9.]+), recall "
                 r"([0-9.]+) on the truth set; predicted P ([0-9.]+) at the library's \d+ "
                 r"faces.*; costs ([0-9.]+) recall against the best F at ([0-9.]+)", line)
    assert m, line
    t, p, r, library_p, cost, t_best = map(float, m.groups())
    assert p >= 0.999 and t <= t_best and r >= 0.9 and library_p >= 0.999
    assert f"recommended cluster {m.group(1)}," in out
    bad = run_cli("calibrate", faces_cache, FACES, "--target-precision", "1.5", check=False)
    assert bad.returncode == 2 and "--target-precision" in bad.stderr


def test_the_split_distance_is_where_a_cluster_falls_in_two():
    """core/cohesion.py: two tight people glued into one label fall apart at the distance
    between them; one person only at a same-person distance; a pair at its own distance."""
    import numpy as np
    from facesets.core.cohesion import SPLIT_SAMPLE, split_distances
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 64))
    a /= np.linalg.norm(a)
    b -= (b @ a) * a
    b /= np.linalg.norm(b)                  # orthogonal: the two people are 1.0 apart
    def person(c, n):
        x = c + 0.15 * rng.standard_normal((n, 64)) / 8
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    x = np.vstack([person(a, 6), person(b, 5), person(a, 10), person(a, 1), person(b, 1),
                   person(a, SPLIT_SAMPLE + 40)])
    labels = np.r_[[0] * 11, [1] * 10, [2] * 2, [3] * (SPLIT_SAMPLE + 40)]
    split = split_distances(x, labels)
    assert split[0] > 0.9                   # two people
    assert split[1] < 0.2 and split[3] < 0.2   # one person (the last one sampled)
    assert abs(split[2] - (1 - x[21] @ x[22])) < 1e-5   # a pair: its distance
    assert split_distances(x[:1], np.array([0]))[0] == 0.0
