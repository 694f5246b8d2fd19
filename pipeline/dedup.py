"""dedup: exact and near duplicates across all shards, in time close to linear in the row count.

Three kinds of evidence join rows into groups (connected components of the "same image" graph):

- exact: the same sha256 of the stored bytes;
- phash: Hamming distance of the 64-bit perceptual hashes ≤ k, found by multi-index hashing
  (Norouzi et al. 2012): the hash is cut into 3 substrings, and two hashes within distance k
  agree within ⌊k/3⌋ bits on at least one of them (pigeonhole), so each substring table is probed
  with every variant of the query at ≤ ⌊k/3⌋ flipped bits and only those candidates are checked
  in full. Identical hashes are merged first, so a thousand copies of one picture cost nothing;
- embedding: cosine ≥ τ between the scorer's L2-normalized embeddings, found by random-hyperplane
  LSH (Charikar 2002): ``tables`` tables of ``bits`` hyperplanes each, candidates are rows that share
  a bucket in some table, checked with a dot product.

Never all pairs: the work grows with the rows times the (small) bucket occupancy. In each group
the best copy stays — highest raw aesthetic score, then most pixels, then the smallest key — and
the others point to it with ``duplicate_of``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from zxl.config import ConfigError
from zxl.pipeline.config import DedupConfig

SUBSTRINGS = ((0, 21), (21, 21), (42, 22))  # (offset, width) of the 3 phash substrings
CHUNK = 200_000  # query rows per vectorized probe, to bound memory


@dataclass
class Pairs:
    """Edges of the duplicate graph, as row indices."""

    a: list[np.ndarray]
    b: list[np.ndarray]

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a):
            self.a.append(np.asarray(a, np.int64))
            self.b.append(np.asarray(b, np.int64))

    def count(self) -> int:
        return int(sum(len(x) for x in self.a))


def validate(cfg: DedupConfig) -> None:
    if cfg.phash_distance > 8:
        raise ConfigError(f"dedup.phash_distance above 8 merges unrelated pictures; got {cfg.phash_distance}")
    if not 0 <= cfg.embedding_cosine <= 1:
        raise ConfigError(f"dedup.embedding_cosine must be between 0 (off) and 1, got {cfg.embedding_cosine}")


def _group_equal(values: np.ndarray, pairs: Pairs) -> None:
    """Join every row to the first row with the same value (values: any sortable array)."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    same = np.r_[False, v[1:] == v[:-1]]
    first = np.maximum.accumulate(np.where(~same, np.arange(len(v)), 0))
    pairs.add(order[same], order[first[same]])


def _flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        for bits in itertools.combinations(range(width), r):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, np.uint64)


def phash_pairs(phash: np.ndarray, k: int, pairs: Pairs) -> None:
    """Pairs (i, j), i ≠ j, with popcount(phash_i ^ phash_j) ≤ k; identical hashes join directly."""
    h = np.asarray(phash, np.int64).view(np.uint64)
    uniq, inverse = np.unique(h, return_inverse=True)
    _group_equal(h, pairs)  # identical hashes: one component, no pair enumeration
    if k <= 0 or len(uniq) < 2:
        return
    first_row = np.full(len(uniq), -1, np.int64)
    first_row[inverse[::-1]] = np.arange(len(h))[::-1]  # a representative row per unique hash
    radius = k // len(SUBSTRINGS)
    for offset, width in SUBSTRINGS:
        sub = ((uniq >> np.uint64(offset)) & np.uint64((1 << width) - 1)).astype(np.int64)
        # A direct-address table over the 2^width substring values: rows with value v are
        # order[start[v]:start[v + 1]], so a probe is two array reads, not a binary search.
        order = np.argsort(sub, kind="stable")
        start = np.zeros((1 << width) + 1, np.int64)
        np.cumsum(np.bincount(sub, minlength=1 << width), out=start[1:])
        masks = _flip_masks(width, radius).astype(np.int64)
        for first in range(0, len(uniq), CHUNK):
            q_idx = np.arange(first, min(first + CHUNK, len(uniq)))
            for mask in masks:
                probe = sub[q_idx] ^ mask
                lo, hi = start[probe], start[probe + 1]
                counts = hi - lo
                total = int(counts.sum())
                if not total:
                    continue
                qi = np.repeat(q_idx, counts)
                pos = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total)
                cand = order[pos]
                keep = cand > qi  # each unordered pair once, never a hash with itself
                qi, cand = qi[keep], cand[keep]
                close = np.bitwise_count(uniq[qi] ^ uniq[cand]) <= k
                pairs.add(first_row[qi[close]], first_row[cand[close]])


def embedding_pairs(emb: np.ndarray, tau: float, pairs: Pairs, rows: np.ndarray, seed: int = 0) -> None:
    """Pairs of ``rows`` whose embeddings (L2-normalized, [N, D]) have cosine ≥ tau."""
    n = len(emb)
    if n < 2 or tau <= 0:
        return
    emb = np.asarray(emb, np.float32)
    bits = int(min(20, max(6, np.ceil(np.log2(n)) - 4)))
    # Enough tables that a pair at cosine tau collides somewhere with probability >= 99.5%.
    p_one = (1 - np.arccos(np.clip(tau, -1, 1)) / np.pi) ** bits
    tables = int(min(64, max(4, np.ceil(np.log(0.005) / np.log(max(1e-9, 1 - p_one))))))
    rng = np.random.default_rng(seed)
    planes = rng.standard_normal((emb.shape[1], bits * tables)).astype(np.float32)
    signs = (emb @ planes > 0).reshape(n, tables, bits)  # every table's hyperplanes in one product
    weights = 1 << np.arange(bits, dtype=np.int64)
    for t in range(tables):
        codes = signs[:, t, :].astype(np.int64) @ weights
        order = np.argsort(codes, kind="stable")
        c = codes[order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for size in np.unique(sizes[sizes > 1]):
            # every bucket of this size at once: members [n_buckets, size], their Gram matrices
            # [n_buckets, size, size] (each vector read once per table, not once per pair)
            ii, jj = np.triu_indices(size, 1)
            all_members = order[starts[sizes == size][:, None] + np.arange(size)[None, :]]
            step = max(1, CHUNK // (size * size))
            for lo in range(0, len(all_members), step):
                members = all_members[lo : lo + step]
                v = emb[members]
                gram = np.matmul(v, v.transpose(0, 2, 1))[:, ii, jj]
                close = gram >= tau
                a, b = members[:, ii][close], members[:, jj][close]
                pairs.add(rows[a], rows[b])


def find_duplicates(
    keys: np.ndarray,
    aesthetic: np.ndarray,
    pixels: np.ndarray,
    sha256: np.ndarray | None,
    phash: np.ndarray | None,
    cfg: DedupConfig,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict]:
    """``duplicate_of`` for each row (the kept row's key, or None) and counts per evidence kind.

    ``embeddings`` is (row indices, vectors) for the rows that have one.
    """
    n = len(keys)
    counts = {"exact": 0, "phash": 0, "embedding": 0}
    pairs = Pairs([], [])
    if n == 0:
        return np.full(0, None, object), counts
    if cfg.exact and sha256 is not None:
        _group_equal(np.asarray(sha256, object).astype(str), pairs)
        counts["exact"] = pairs.count()
    if cfg.phash_distance >= 0 and phash is not None:
        before = pairs.count()
        phash_pairs(phash, cfg.phash_distance, pairs)
        counts["phash"] = pairs.count() - before
    if cfg.embedding_cosine > 0 and embeddings is not None and len(embeddings[0]) > 1:
        before = pairs.count()
        embedding_pairs(embeddings[1], cfg.embedding_cosine, pairs, np.asarray(embeddings[0], np.int64))
        counts["embedding"] = pairs.count() - before
    duplicate_of = np.full(n, None, object)
    if not pairs.a:
        return duplicate_of, counts
    a, b = np.concatenate(pairs.a), np.concatenate(pairs.b)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    n_comp, label = connected_components(graph, directed=False)
    # Best first: highest aesthetic (NaN last), then most pixels, then smallest key.
    score = np.where(np.isfinite(aesthetic), aesthetic, -np.inf)
    order = np.lexsort((np.asarray(keys, object).astype(str), -pixels.astype(np.float64), -score, label))
    first_of_label = np.r_[True, label[order][1:] != label[order][:-1]]
    keeper = np.empty(n_comp, np.int64)
    keeper[label[order][first_of_label]] = order[first_of_label]
    kept_row = keeper[label]
    dup = kept_row != np.arange(n)
    duplicate_of[dup] = np.asarray(keys, object)[kept_row[dup]]
    return duplicate_of, counts
