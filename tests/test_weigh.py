import numpy as np
import pytest

from zxl.config import ConfigError
from zxl.pipeline.config import WeighConfig
from zxl.pipeline.weigh import repeats, validate


def test_default_table():
    status = np.array(["ok"] * 10 + ["duplicate", "failed_download", "failed_decode"], object)
    score = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 9, 9, 9])
    assert repeats(status, score, WeighConfig()).tolist() == [1, 1, 1, 1, 1, 1, 1, 2, 3, 1, 0, 0, 0]


def test_configured_table():
    cfg = WeighConfig(repeats={9: 5, 1: 0}, default=2)
    got = repeats(np.array(["ok"] * 3, object), np.array([1, 5, 9]), cfg)
    assert got.dtype == np.int16 and got.tolist() == [0, 2, 5]


def test_bad_table():
    with pytest.raises(ConfigError, match="weigh.repeats"):
        validate(WeighConfig(repeats={10: 3}))
    with pytest.raises(ConfigError, match="weigh.repeats"):
        validate(WeighConfig(repeats={9: -1}))


def _skewed(seed=0, k=6, per=60, dim=32):
    """k well-separated blobs; the top scores sit almost all in blob 0 (what score-only repeats over-draw)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 4
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + rng.normal(size=(k * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    score = np.where(labels == 0, rng.integers(8, 10, len(labels)), rng.integers(1, 8, len(labels)))
    status = np.array(["ok"] * len(labels), object)
    return status, score, x.astype(np.float16), labels


def test_diversity_zero_is_todays_repeats_exactly():
    from zxl.pipeline.weigh import weigh

    status, score, x, _ = _skewed()
    status[:5] = "duplicate"
    cfg = WeighConfig()
    reps, weights, clusters, report = weigh(status, score, cfg, x, np.ones(len(x), bool))
    assert np.array_equal(reps, repeats(status, score, cfg)) and reps.dtype == np.int16
    assert np.array_equal(weights, reps.astype(np.float32))
    assert report["chosen"]["weights"] == report["zero"]  # the same draws, the same figures
    assert (clusters[:5] == -1).all() and (clusters[5:] >= 0).all()  # duplicates are not clustered
    no_vectors = weigh(status, score, cfg, None, np.zeros(len(x), bool))
    assert np.array_equal(no_vectors[0], reps) and no_vectors[3]["clusters"] is None


def test_diversity_one_draws_every_cluster_equally():
    from zxl.pipeline.weigh import weigh

    status, score, x, truth = _skewed()
    base = repeats(status, score, WeighConfig())
    zero = weigh(status, score, WeighConfig(), x, np.ones(len(x), bool))[3]["zero"]
    reps, weights, clusters, report = weigh(status, score, WeighConfig(diversity=1.0), x, np.ones(len(x), bool))
    assert report["clusters"]["k"] == 6 and report["clusters"]["chosen"] == "vendi of the draws"  # k from the data
    # the blobs are found: each cluster is one blob
    assert len({(c, t) for c, t in zip(clusters, truth, strict=True)}) == 6
    mass = np.bincount(clusters, weights=weights)
    np.testing.assert_allclose(mass, mass.mean(), rtol=1e-6)  # each cluster drawn equally often
    assert abs(weights.sum() - base.sum()) < 1e-3  # the epoch keeps its length
    assert report["chosen"]["weights"]["effective_clusters"] > zero["effective_clusters"] + 0.3
    assert report["chosen"]["weights"]["effective_clusters"] == pytest.approx(6.0, abs=1e-3)
    assert report["chosen"]["weights"]["mean_score"] < zero["mean_score"]  # variety costs some mean score
    assert reps.dtype == np.int16 and (reps >= 1).all()  # kohya's integers; a trained row stays trained
    assert report["chosen"]["repeats"]["effective_clusters"] > zero["effective_clusters"]
    # within a cluster the score order stays: a score_9 row weighs more than a score_8 row of the same cluster
    in0 = clusters == clusters[0]
    assert weights[in0 & (score == 9)].min() > weights[in0 & (score == 8)].max()
    half = weigh(status, score, WeighConfig(diversity=0.5, clusters=6), x, np.ones(len(x), bool))[3]
    assert report["zero"]["effective_clusters"] < half["chosen"]["weights"]["effective_clusters"] < 6.0


def test_set_clusters_and_range_errors():
    from zxl.pipeline.weigh import weigh

    status, score, x, _ = _skewed()
    report = weigh(status, score, WeighConfig(diversity=1.0, clusters=3), x, np.ones(len(x), bool))[3]
    assert report["clusters"] == {"k": 3, "chosen": "weigh.clusters"} and len(report["cluster_sizes"]) == 3
    with pytest.raises(ConfigError, match=r"weigh.diversity must be between 0 .* and 1, got 1.5"):
        validate(WeighConfig(diversity=1.5))
    with pytest.raises(ConfigError, match="weigh.diversity needs embeddings"):
        weigh(status, score, WeighConfig(diversity=0.5), None, np.zeros(len(x), bool))
