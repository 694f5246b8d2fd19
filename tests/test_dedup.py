import io
import itertools

import numpy as np
import pytest
from PIL import Image

from zxl.demo_corpus import draw_picture
from zxl.pipeline.config import DedupConfig
from zxl.pipeline.dedup import Pairs, embedding_pairs, find_duplicates, phash_pairs
from zxl.pipeline.inspection import phash


def _brute_force(h, k):
    u = h.view(np.uint64)
    d = np.bitwise_count(u[:, None] ^ u[None, :])
    return {(i, j) for i, j in zip(*np.nonzero(d <= k), strict=True) if i < j}


def _components(pairs, n):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs.a:
        return np.arange(n)
    a, b = np.concatenate(pairs.a), np.concatenate(pairs.b)
    return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[1]


@pytest.mark.parametrize("k", [0, 2, 4, 5, 7])
def test_multi_index_hashing_finds_exactly_the_close_pairs(k):
    rng = np.random.default_rng(k)
    base = rng.integers(-(2**63), 2**63 - 1, 300, dtype=np.int64)
    masks = [sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 9), replace=False)) for _ in range(300)]
    near = base ^ np.array(masks, np.uint64).view(np.int64)  # 0..8 bits away
    h = np.concatenate([base, near, base[:20]])  # planted near copies and exact copies
    pairs = Pairs([], [])
    phash_pairs(h, k, pairs)
    truth = _components_from_set(_brute_force(h, k), len(h))
    got = _components(pairs, len(h))
    assert _same_partition(got, truth)


def _components_from_set(edges, n):
    p = Pairs([], [])
    if edges:
        a, b = zip(*edges, strict=True)
        p.add(np.array(a), np.array(b))
    return _components(p, n)


def _same_partition(x, y):
    return all((x[i] == x[j]) == (y[i] == y[j]) for i, j in itertools.combinations(range(len(x)), 2))


def _jpeg(img, q):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_planted_near_duplicates_found_distinct_pictures_kept():
    originals = [draw_picture(p, 11, 768, 512) for p in range(12)]
    rows, picture = [], []
    for p, img in enumerate(originals):
        w, h = img.size
        copies = [
            img,
            img.resize((w // 2, h // 2), Image.Resampling.LANCZOS),  # resized
            _jpeg(img, 40),  # recompressed
            img.crop((w // 100, h // 100, w - w // 100, h - h // 100)),  # slightly cropped (1% a side)
        ]
        rows += copies
        picture += [p] * len(copies)
    hashes = np.array([phash(im) for im in rows], np.int64)
    n = len(rows)
    keys = np.array([f"k{i:03d}" for i in range(n)], object)
    aesthetic = np.array([5.0 if i % 4 == 0 else 1.0 for i in range(n)])  # the original scores best
    pixels = np.array([im.width * im.height for im in rows])
    dup, counts = find_duplicates(keys, aesthetic, pixels, None, hashes, DedupConfig())
    picture = np.array(picture)
    for i in range(n):
        if i % 4 == 0:
            assert dup[i] is None  # every original is kept
        else:
            assert dup[i] == keys[i - i % 4], (i, dup[i])  # every copy points at its original
    assert counts["phash"] > 0


def test_exact_copies_keep_the_best_then_largest_then_smallest_key():
    keys = np.array(["b", "a", "c", "d"], object)
    sha = np.array(["x", "x", "x", "y"], object)
    aesthetic = np.array([1.0, 1.0, np.nan, 3.0])
    pixels = np.array([10, 10, 99, 1])
    dup, counts = find_duplicates(keys, aesthetic, pixels, sha, None, DedupConfig(phash_distance=-1))
    assert dup.tolist() == ["a", None, "a", None]  # a and b tie on score and size: the smaller key stays
    assert counts["exact"] == 2


def test_embedding_cosine_finds_near_vectors_only():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((400, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = rng.standard_normal((50, 64)).astype(np.float32) * 0.02
    near = base[:50] + noise
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    emb = np.concatenate([base, near])
    pairs = Pairs([], [])
    rows = np.arange(len(emb)) + 1000
    embedding_pairs(emb, 0.95, pairs, rows)
    found = {tuple(sorted(p)) for p in zip(np.concatenate(pairs.a), np.concatenate(pairs.b), strict=True)}
    expected = {(1000 + i, 1400 + i) for i in range(50)}
    cos = emb @ emb.T
    assert expected <= found  # all planted pairs (cosine ~0.999)
    assert all(cos[a - 1000, b - 1000] >= 0.95 for a, b in found)


def test_nothing_to_do():
    dup, counts = find_duplicates(np.array([], object), np.array([]), np.array([]), None, None, DedupConfig())
    assert len(dup) == 0
