"""The clustering engine: graph vs exact on real embeddings, cannot-link, metrics."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import ROOT, TEST_THRESHOLD, run_cli
from facesets.formats.cache import load_cache
from facesets.steps.cluster import select_faces
from facesets.engine import (GraphEngine, add_rows, cluster_faces, normalize_rows,
                             violates_cannot_link)
from facesets.core.metrics import bcubed_scores, pairwise_scores

sys.path.insert(0, str(ROOT / "bench"))
import synth  # noqa: E402


@pytest.mark.parametrize("threshold", [0.5, 0.65, 0.8])
def test_graph_agrees_with_exact_on_real_faces(faces_cache, threshold):
    sel = select_faces(load_cache(faces_cache))
    cl = sel.cannot_link()
    exact = cluster_faces(sel.embeddings, threshold, cl, engine="exact")
    graph = cluster_faces(sel.embeddings, threshold, cl, engine="graph")
    assert len(np.unique(exact)) < len(exact)  # something was grouped
    assert pairwise_scores(graph, exact).f >= 0.99
    assert bcubed_scores(graph, exact).f >= 0.99


def test_graph_cell_search_agrees_with_exact_on_synthetic():
    # the approximate (cells) neighbour search that large libraries use, forced on 4000 faces
    x, _ = synth.generate(4000, seed=7)
    exact = cluster_faces(x, 0.65, engine="exact")
    graph = GraphEngine(search="cells").cluster(normalize_rows(x), 0.65)
    assert len(np.unique(exact)) < 0.8 * len(x)
    assert pairwise_scores(graph, exact).f >= 0.99
    assert bcubed_scores(graph, exact).f >= 0.99


@pytest.mark.parametrize("engine", ["exact", "graph"])
def test_cannot_link_honoured_on_group_photos(group_cache, engine):
    sel = select_faces(load_cache(group_cache))
    cl = sel.cannot_link()
    assert len(cl) > 100  # the group photos hold many faces each
    lenient = 0.95        # lenient enough that faces of one photo would be grouped...
    free = cluster_faces(sel.embeddings, lenient, None, engine=engine)
    assert violates_cannot_link(free, cl)
    labels = cluster_faces(sel.embeddings, lenient, cl, engine=engine)
    assert not violates_cannot_link(labels, cl)  # ... unless told not to
    assert len(np.unique(labels)) < len(labels)


def test_cli_engines_give_the_same_persons(faces_cache, tmp_path):
    groups = {}
    for engine in ("exact", "graph"):
        out = tmp_path / engine
        run_cli("cluster", faces_cache, out, "--threshold", TEST_THRESHOLD, "--engine", engine)
        m = json.loads((out / "manifest.json").read_text())
        groups[engine] = sorted(sorted(f["key"] for f in p["faces"]) for p in m["persons"])
    assert groups["exact"] == groups["graph"]
    assert len(groups["exact"]) >= 20


@pytest.mark.unit
def test_add_rows_is_np_add_at():
    # repeated indices add up; untouched rows stay
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 9, 100)
    rows = rng.normal(size=(100, 4)).astype(np.float32)
    want = np.ones((12, 4))
    np.add.at(want, idx, rows)
    got = np.ones((12, 4))
    add_rows(got, idx, rows)
    assert np.allclose(got, want, atol=1e-5) and not np.allclose(got, 1.0)
    assert (got[9:] == 1.0).all()
    add_rows(got, np.zeros(0, dtype=np.int64), rows[:0])      # nothing to add
    assert np.allclose(got, want, atol=1e-5)


@pytest.mark.unit
def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    pred, true = rng.integers(0, 30, 400), rng.integers(0, 25, 400)
    same_p = pred[:, None] == pred[None, :]
    same_t = true[:, None] == true[None, :]
    iu = np.triu_indices(len(pred), k=1)
    tp = np.sum((same_p & same_t)[iu])
    pw = pairwise_scores(pred, true)
    assert pw.precision == pytest.approx(tp / np.sum(same_p[iu]))
    assert pw.recall == pytest.approx(tp / np.sum(same_t[iu]))
    both = (same_p & same_t).sum(axis=1)  # includes the face itself
    bc = bcubed_scores(pred, true)
    assert bc.precision == pytest.approx(np.mean(both / same_p.sum(axis=1)))
    assert bc.recall == pytest.approx(np.mean(both / same_t.sum(axis=1)))
    assert pairwise_scores(true, true).f == bcubed_scores(true, true).f == 1.0
