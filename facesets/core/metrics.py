"""Clustering quality against ground truth: pairwise and BCubed precision / recall / F.

Both come from the contingency table (predicted cluster x true identity), never from the
N x N pair matrix, so they are cheap at a million faces.
  pairwise: over all pairs of faces, P = correct same-cluster pairs / predicted same-cluster
            pairs, R = correct / true same-identity pairs.
  BCubed:   per face, P = share of its cluster that has its identity, R = share of its
            identity that is in its cluster; averaged over faces. Singletons count, which
            pairwise ignores (a face alone has no pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Scores:
    precision: float
    recall: float

    @property
    def f(self) -> float:
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    def line(self) -> str:
        return f"P {self.precision:.4f} R {self.recall:.4f} F {self.f:.4f}"


def _contingency(pred: np.ndarray, true: np.ndarray):
    """Cell counts with the cluster and identity index of each cell, and the margins."""
    pred = np.unique(np.asarray(pred), return_inverse=True)[1].reshape(-1)
    true = np.unique(np.asarray(true), return_inverse=True)[1].reshape(-1)
    if len(pred) != len(true):
        raise ValueError("predicted and true labels differ in length")
    cells, inverse, counts = np.unique(pred.astype(np.int64) * (true.max() + 1) + true,
                                       return_inverse=True, return_counts=True)
    return (counts, cells // (true.max() + 1), cells % (true.max() + 1), inverse.reshape(-1),
            np.bincount(pred), np.bincount(true), pred, true)


def _pairs(c: np.ndarray) -> float:
    c = c.astype(np.float64)
    return float(np.sum(c * (c - 1) / 2))


def pairwise_scores(pred: np.ndarray, true: np.ndarray) -> Scores:
    """Pairwise precision / recall (1.0 where there are no pairs to get wrong)."""
    if len(pred) == 0:
        return Scores(1.0, 1.0)
    counts, _, _, _, pred_sizes, true_sizes, _, _ = _contingency(pred, true)
    tp, pp, tt = _pairs(counts), _pairs(pred_sizes), _pairs(true_sizes)
    return Scores(tp / pp if pp else 1.0, tp / tt if tt else 1.0)


def bcubed_scores(pred: np.ndarray, true: np.ndarray) -> Scores:
    """BCubed precision / recall, averaged over faces."""
    if len(pred) == 0:
        return Scores(1.0, 1.0)
    counts, _, _, inverse, pred_sizes, true_sizes, p, t = _contingency(pred, true)
    cell = counts[inverse].astype(np.float64)
    return Scores(float(np.mean(cell / pred_sizes[p])), float(np.mean(cell / true_sizes[t])))


def score_line(pred: np.ndarray, true: np.ndarray) -> str:
    """One line: pairwise and BCubed P/R/F."""
    return (f"pairwise {pairwise_scores(pred, true).line()}; "
            f"BCubed {bcubed_scores(pred, true).line()}")
