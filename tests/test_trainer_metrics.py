"""trainer/metrics.py on known inputs: a grey batch is flagged, identical samples have the lowest
variety, a monotone steering has ρ = 1."""

import numpy as np
import pytest
from PIL import Image

from zxl.trainer import metrics


def colourful(seed: int, size=(48, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, : size[0] // 2] = rng.integers(0, 256, 3)
    a[:, size[0] // 2 :] = rng.integers(0, 256, 3)
    a[: size[1] // 3] = 255 - a[: size[1] // 3]
    return Image.fromarray(a)


def test_vendi_of_identical_orthogonal_and_random_sets():
    same = np.tile(np.random.default_rng(0).standard_normal(16), (6, 1))
    assert metrics.vendi(same) == pytest.approx(1.0)
    assert metrics.vendi(np.eye(5)) == pytest.approx(5.0)
    spread = np.random.default_rng(1).standard_normal((6, 16))
    assert 1.0 < metrics.vendi(spread) <= 6.0
    assert metrics.mean_pairwise_distance(same) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mean_pairwise_distance(spread) > 0.5


def test_identical_samples_have_the_lowest_variety_on_pixel_embeddings():
    from zxl.scorers.pixels import pixel_embeddings

    identical = pixel_embeddings([colourful(0)] * 4)
    varied = pixel_embeddings([colourful(s) for s in range(4)])
    assert metrics.vendi(identical) == pytest.approx(1.0, abs=1e-6)
    assert metrics.vendi(varied) > metrics.vendi(identical) + 0.5


def test_tone_and_its_flags():
    training = metrics.tone_summary([colourful(s) for s in range(8)])
    grey = metrics.tone_summary([Image.new("RGB", (48, 32), (128, 128, 128))] * 4)
    assert grey["contrast"] == 0 and grey["saturation"] == 0
    assert "grey" in metrics.tone_flags(grey, training)
    washed = metrics.tone_summary([Image.new("RGB", (48, 32), (250, 250, 245))] * 4)
    assert "washed_out" in metrics.tone_flags(washed, training)
    dark = metrics.tone_summary([Image.new("RGB", (48, 32), (5, 5, 8))] * 4)
    assert "dark" in metrics.tone_flags(dark, training)
    assert metrics.tone_flags(metrics.tone_summary([colourful(s) for s in range(8, 16)]), training) == []
    white = metrics.tone(Image.new("RGB", (4, 4), (255, 255, 255)))
    assert white == {"luminance": pytest.approx(1.0), "contrast": 0.0, "saturation": 0.0}


def test_steering_mean_and_rank_correlation():
    up = metrics.steering({t: [t * 0.1, t * 0.1 + 0.02] for t in range(1, 10)})
    assert up["spearman"] == pytest.approx(1.0) and up["mean"]["score_9"] == pytest.approx(0.91)
    down = metrics.steering({t: [-t] for t in range(1, 10)})
    assert down["spearman"] == pytest.approx(-1.0)
    flat = metrics.steering({t: [0.5] for t in range(1, 10)})
    assert flat["spearman"] == 0.0


def test_band_means():
    t = np.array([10, 20, 150, 990])
    loss = np.array([1.0, 3.0, 5.0, 7.0])
    bands = metrics.band_means(t, loss, [0, 100, 500, 1000])
    assert bands == {"0-99": 2.0, "100-499": 5.0, "500-999": 7.0}
