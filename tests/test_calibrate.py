import numpy as np
import pytest

from zxl.config import ConfigError
from zxl.pipeline.calibrate import apply_edges, choose_edges, edges_from_catalog, quantile_edges, validate
from zxl.pipeline.config import CalibrateConfig


def test_equal_ninths_within_one_percent():
    raw = np.random.default_rng(0).normal(5, 2, 90_000)
    edges = choose_edges(CalibrateConfig(), raw)["edges"]
    share = np.bincount(apply_edges(raw, edges), minlength=10)[1:] / len(raw)
    assert np.all(np.abs(share - 1 / 9) < 0.01), share


def test_configured_fractions_give_those_shares():
    raw = np.random.default_rng(1).random(50_000)
    fr = [0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]  # score_9 = the top 5%
    scores = apply_edges(raw, choose_edges(CalibrateConfig(fractions=fr), raw)["edges"])
    assert abs((scores == 9).mean() - 0.05) < 0.01 and abs((scores == 1).mean() - 0.3) < 0.01


def test_fixed_edges_and_boundaries():
    edges = [1, 2, 3, 4, 5, 6, 7, 8]
    got = apply_edges(np.array([0.5, 1.0, 1.5, 7.99, 8.0, 100.0, np.nan]), edges)
    assert got.tolist() == [1, 2, 2, 8, 9, 9, 0]
    assert choose_edges(CalibrateConfig(method="fixed", edges=edges), np.zeros(3))["edges"] == edges


def test_reused_edges_give_the_same_scores(tmp_path):
    import json

    rng = np.random.default_rng(2)
    first = rng.normal(size=5000)
    edges = quantile_edges(first, [i / 9 for i in range(1, 9)])
    (tmp_path / "_manifest.json").write_text(json.dumps({"score_edges": {"edges": edges}}))
    second = np.concatenate([first, rng.normal(3, 1, 5000)])  # a different corpus
    chosen = choose_edges(CalibrateConfig(edges_from=str(tmp_path)), second)
    assert chosen["method"] == "from_catalog" and chosen["edges"] == edges
    np.testing.assert_array_equal(apply_edges(second[:5000], chosen["edges"]), apply_edges(first, edges))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (CalibrateConfig(method="median"), "calibrate.method"),
        (CalibrateConfig(method="fixed", edges=[1, 2]), "calibrate.edges must hold 8"),
        (CalibrateConfig(method="fixed", edges=[8, 7, 6, 5, 4, 3, 2, 1]), "non-decreasing"),
        (CalibrateConfig(fractions=[0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), "strictly between 0 and 1"),
    ],
)
def test_bad_settings_name_the_key(cfg, message):
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_edges_from_a_folder_that_is_no_catalog(tmp_path):
    with pytest.raises(ConfigError, match="calibrate.edges_from"):
        edges_from_catalog(str(tmp_path))


def test_no_rows_no_edges():
    assert quantile_edges(np.array([np.nan]), [0.5] * 8) == []
    assert apply_edges(np.array([1.0]), []).tolist() == [0]
