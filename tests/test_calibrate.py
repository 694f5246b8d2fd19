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


def _era_corpus(n=20_000, seed=3):
    """Raw scores that rise with the year (a scorer that prefers recent styles), years 2010..2024."""
    rng = np.random.default_rng(seed)
    years = rng.integers(2010, 2025, n)
    raw = rng.normal(0, 1, n) + 0.25 * (years - 2010)
    return raw, years


def test_within_year_removes_the_year_from_the_score_tags_and_keeps_ninths():
    from zxl.pipeline.calibrate import calibrate_rows, score_year, stratum_labels

    raw, years = _era_corpus()
    kept = np.ones(len(raw), bool)
    kept[::10] = False  # duplicates: scored by their stratum's edges, not counted
    labels = stratum_labels(["year"], {"year": years.astype(object)})
    glob, _ = calibrate_rows(CalibrateConfig(), raw, kept, labels)
    within, report = calibrate_rows(CalibrateConfig(within=["year"]), raw, kept, labels)
    sy = score_year(within, glob, years.astype(object), kept)
    assert sy["rho_global_edges"] > 0.5 and abs(sy["rho"]) < 0.02, sy
    share = np.bincount(within[kept], minlength=10)[1:] / kept.sum()
    assert np.all(np.abs(share - 1 / 9) < 0.01), share  # equal ninths overall
    for y in (2010, 2017, 2024):  # and within every year
        s = np.bincount(within[kept & (years == y)], minlength=10)[1:] / (kept & (years == y)).sum()
        assert np.all(np.abs(s - 1 / 9) < 0.03), (y, s)
    assert set(report["strata"]) == {str(y) for y in range(2010, 2025)} and report["fallback"]["rows"] == 0


def test_small_strata_and_rows_without_a_year_fall_back_to_the_global_edges():
    from zxl.pipeline.calibrate import calibrate_rows, stratum_labels

    raw, years = _era_corpus(3000)
    years = years.astype(object)
    years[:50] = None
    years[50:80] = 1999  # 30 rows: under min_stratum
    kept = np.ones(len(raw), bool)
    labels = stratum_labels(["year", "rating"], {"year": years, "rating": np.array(["general"] * len(raw), object)})
    assert labels[0] is None and labels[60] == "1999/general"
    cfg = CalibrateConfig(within=["year", "rating"], min_stratum=90)
    scores, report = calibrate_rows(cfg, raw, kept, labels)
    glob = apply_edges(raw, report["edges"])
    np.testing.assert_array_equal(scores[:80], glob[:80])
    assert report["fallback"] == {"rows": 80, "small_strata": ["1999/general"], "rows_without_stratum": 50}
    assert "1999/general" not in report["strata"] and report["within"] == ["year", "rating"]
    spans = stratum_labels(["year"], {"year": np.array([2005, 2009, 2010, None], object)}, year_span=5)
    assert spans.tolist() == ["2005-2009", "2005-2009", "2010-2014", None]


def test_within_is_checked():
    with pytest.raises(ConfigError, match="calibrate.within names year, rating"):
        validate(CalibrateConfig(within=["month"]))
    with pytest.raises(ConfigError, match="at most once"):
        validate(CalibrateConfig(within=["year", "year"]))
    with pytest.raises(ConfigError, match="needs calibrate.method quantile"):
        validate(CalibrateConfig(within=["year"], method="fixed", edges=[1, 2, 3, 4, 5, 6, 7, 8]))
