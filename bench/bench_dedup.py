"""dedup's near-duplicate search: the chunked upper-triangle product (facesets.steps.dedup.near_pairs)
against the naive baseline (one full N x N similarity matrix), same run, same data.

Synthetic 512-D unit embeddings (buffalo_l's size) with 1% planted near copies. Reports
seconds, pairs found (must be equal) and the largest block held in memory.

    python bench/bench_dedup.py [N ...]        (default 5000 10000 20000)
    python bench/bench_dedup.py --large N      (default 100000)

``--large``: past dedup.EXACT_MAX_FACES, near_pairs uses the engine's neighbour search;
this compares it with the exact chunked search on clustered data (identities with spread,
1% planted near copies): seconds of each and whether they find the same pairs.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from facesets.steps import dedup  # noqa: E402

DIM = 512


def data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    k = n // 100
    x[n - k:] = x[:k] + rng.normal(scale=0.05, size=(k, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive(x: np.ndarray, max_distance: float) -> int:
    sims = x @ x.T                                  # N x N: the baseline dedup must avoid
    i, j = np.nonzero(np.triu(sims >= 1 - max_distance, k=1))
    return len(i)


def main(sizes: list[int]) -> None:
    print(f"{'N':>7} {'chunked s':>10} {'naive s':>9} {'ratio':>6} {'pairs':>6} "
          f"{'block MB':>9} {'naive MB':>9}")
    for n in sizes:
        x = data(n)
        t = time.perf_counter()
        pairs, _ = dedup.near_pairs(x, dedup.DEFAULT_MAX_DISTANCE)
        t_chunk = time.perf_counter() - t
        t = time.perf_counter()
        n_naive = naive(x, dedup.DEFAULT_MAX_DISTANCE)
        t_naive = time.perf_counter() - t
        assert n_naive == len(pairs), (n_naive, len(pairs))
        rows = max(1, min(n, dedup.CHUNK_ELEMENTS // n))
        print(f"{n:>7} {t_chunk:>10.2f} {t_naive:>9.2f} {t_chunk / t_naive:>6.2f} "
              f"{len(pairs):>6} {rows * n * 4 / 2**20:>9.0f} {n * n * 5 / 2**20:>9.0f}")


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 20, DIM))
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=1.2, size=(n, DIM))
    k = n // 200
    copies = rng.choice(n, k, replace=False)
    x[rng.choice(np.setdiff1d(np.arange(n), copies), k, replace=False)] = \
        x[copies] + rng.normal(scale=0.01, size=(k, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def large(n: int) -> None:
    x = clustered(n)
    t = time.perf_counter()
    fast, _ = dedup.near_pairs(x, dedup.DEFAULT_MAX_DISTANCE)
    t_fast = time.perf_counter() - t
    limit, dedup.EXACT_MAX_FACES = dedup.EXACT_MAX_FACES, 10 ** 12
    t = time.perf_counter()
    exact, _ = dedup.near_pairs(x, dedup.DEFAULT_MAX_DISTANCE)
    t_exact = time.perf_counter() - t
    dedup.EXACT_MAX_FACES = limit
    same = {tuple(p) for p in fast.tolist()} == {tuple(p) for p in exact.tolist()}
    print(f"N={n}: neighbour search {t_fast:.1f} s ({len(fast)} pairs), exact chunked "
          f"{t_exact:.1f} s ({len(exact)} pairs), ratio {t_exact / t_fast:.1f}x, "
          f"same pairs: {same}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--large"]:
        large(int(sys.argv[2]) if len(sys.argv) > 2 else 100000)
    else:
        main([int(a) for a in sys.argv[1:]] or [5000, 10000, 20000])
