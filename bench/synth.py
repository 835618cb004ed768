"""Realistic synthetic face embeddings for the clustering benchmarks.

Identities have heavy-tailed sizes (a discrete power law, capped) and many singletons, and
the intra- and inter-identity cosine-distance distributions are fitted to real embeddings
(``fit_stats`` on a labelled set, e.g. the cached test faces), in 512-D like buffalo_l.

Model: identity centre c (unit), face x = a * c + sqrt(1 - a^2) * n with n a random unit
vector and a in (0, 1] a per-face "quality"; then cos(x_i, x_j) ~ a_i * a_j for one identity.
The centres share a low-rank component so that inter-identity similarities have the fitted
mean and spread (random 512-D directions alone would all sit at distance 1.0 +- 0.04).

    python bench/synth.py --faces 200000 --out /tmp/synth200k.npz   # also prints the stats
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.engine import normalize_rows  # noqa: E402


@dataclass
class DistanceStats:
    """Mean / std of cosine distance within and between identities."""

    intra_mean: float
    intra_std: float
    inter_mean: float
    inter_std: float


# fitted by ``fit_stats`` on the 180 test faces (testpack_s, centre faces); refitted by
# bench_cluster.py from the live cache when it has one
DEFAULT_STATS = DistanceStats(intra_mean=0.34, intra_std=0.10, inter_mean=0.99, inter_std=0.10)


def fit_stats(embeddings: np.ndarray, labels: np.ndarray) -> DistanceStats:
    """Distance statistics of a labelled set of embeddings (all pairs)."""
    x = normalize_rows(embeddings)
    d = 1.0 - x @ x.T
    same = labels[:, None] == labels[None, :]
    iu = np.triu_indices(len(x), k=1)
    same, d = same[iu], d[iu]
    return DistanceStats(float(d[same].mean()), float(d[same].std()),
                         float(d[~same].mean()), float(d[~same].std()))


def identity_sizes(n_faces: int, rng: np.random.Generator, singleton_frac: float = 0.35,
                   alpha: float = 1.9, max_size: int = 2000) -> np.ndarray:
    """Sizes summing to ``n_faces``: ``singleton_frac`` of faces alone, the rest power-law."""
    n_single = int(round(n_faces * singleton_frac))
    sizes, left = [], n_faces - n_single
    while left > 0:
        s = int(min(max_size, rng.zipf(alpha) + 1, left))  # >= 2 faces
        sizes.append(s)
        left -= s
    return np.concatenate([np.array(sizes, dtype=np.int64), np.ones(n_single, dtype=np.int64)])


def _quality(n: int, stats: DistanceStats, rng: np.random.Generator) -> np.ndarray:
    # intra cos = a_i a_j: E = E[a]^2 and Var = E[a^2]^2 - E[a]^4
    mu = 1.0 - stats.intra_mean
    ea = np.sqrt(mu)
    ea2 = np.sqrt(stats.intra_std ** 2 + mu ** 2)
    sd = np.sqrt(max(ea2 - ea ** 2, 1e-6))
    return np.clip(rng.normal(ea, sd, n), 0.05, 1.0).astype(np.float32)


def _centres(k: int, dim: int, stats: DistanceStats, rng: np.random.Generator,
             chunk: int = 65536) -> np.ndarray:
    # cos(c_a, c_b) = m + (1 - m) * N(0, 1/r): a shared direction g gives the mean m, a
    # rank-r subspace the spread
    m = max(1.0 - stats.inter_mean, 0.0)
    r = int(np.clip(round(1.0 / max(stats.inter_std ** 2, 1e-4)), 8, dim - 1))
    basis = np.linalg.qr(rng.standard_normal((dim, r + 1)).astype(np.float32))[0]
    g, sub = basis[:, 0], basis[:, 1:]
    out = np.empty((k, dim), dtype=np.float32)
    for s in range(0, k, chunk):
        z = rng.standard_normal((min(chunk, k - s), r)).astype(np.float32)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        out[s:s + len(z)] = np.sqrt(m) * g + np.sqrt(1.0 - m) * (z @ sub.T)
    return out


def generate(n_faces: int, dim: int = 512, stats: DistanceStats = DEFAULT_STATS, seed: int = 0,
             singleton_frac: float = 0.35, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 N x dim, identity labels) with the faces in random order."""
    rng = np.random.default_rng(seed)
    sizes = identity_sizes(n_faces, rng, singleton_frac)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    cents = _centres(len(sizes), dim, stats, rng)
    a = _quality(n_faces, stats, rng)
    x = np.empty((n_faces, dim), dtype=np.float32)
    for s in range(0, n_faces, chunk):
        e = slice(s, min(s + chunk, n_faces))
        noise = rng.standard_normal((e.stop - s, dim)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        aa = a[e, None]
        x[e] = aa * cents[labels[e]] + np.sqrt(1.0 - aa ** 2) * noise
    return normalize_rows(x), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--faces", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    x, y = generate(a.faces, a.dim, seed=a.seed)
    np.savez(a.out, embeddings=x, labels=y)
    sample = np.random.default_rng(1).choice(len(x), min(len(x), 3000), replace=False)
    print(fit_stats(x[sample], y[sample]), f"identities={len(np.unique(y))}")


if __name__ == "__main__":
    main()
