"""zxl/diversity.py on sets whose answer is known: the Conditional Vendi score against its definition
and its limiting cases, the prompt kernel, cluster shares and the smoothed KL divergence."""

import numpy as np
import pytest

from zxl.diversity import cluster_shares, conditional_vendi, effective_clusters, kl_divergence, prompt_kernel, vendi


def entropy(k: np.ndarray) -> float:
    """Shannon entropy of the eigenvalues of K/n, written out separately from the module."""
    lam = np.linalg.eigvalsh(k / np.trace(k))
    lam = lam[lam > 1e-12]
    return float(-(lam * np.log(lam)).sum())


def test_one_prompt_gives_the_vendi_score():
    x = np.random.default_rng(0).standard_normal((7, 12))
    assert conditional_vendi(x, np.ones((7, 7))) == pytest.approx(vendi(x), rel=1e-9)


def test_unrelated_prompts_give_the_weighted_geometric_mean_of_their_vendi_scores():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 10)), rng.standard_normal((6, 10))
    x = np.vstack([a, b])
    kt = np.zeros((10, 10))
    kt[:4, :4] = kt[4:, 4:] = 1
    want = np.exp(0.4 * np.log(vendi(a)) + 0.6 * np.log(vendi(b)))
    assert conditional_vendi(x, kt) == pytest.approx(want, rel=1e-9)
    # the variety the prompts explain is taken out: the plain score is larger
    assert vendi(x) > conditional_vendi(x, kt)


def test_images_that_differ_only_as_their_prompts_do_have_no_variety_of_their_own():
    base = np.eye(5)
    x = np.repeat(base, 3, axis=0)  # three identical samples of each of 5 orthogonal pictures
    kt = np.kron(np.eye(5), np.ones((3, 3)))  # one prompt each
    assert conditional_vendi(x, kt) == pytest.approx(1.0, abs=1e-9)
    assert vendi(x) == pytest.approx(5.0)


def test_definition_with_a_graded_prompt_kernel():
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((9, 6)), rng.standard_normal((9, 4))
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    kt = prompt_kernel([], t)
    want = np.exp(entropy((xu @ xu.T) * kt) - entropy(kt))
    assert conditional_vendi(x, kt) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="9×9"):
        conditional_vendi(x, kt[:8, :8])


def test_prompt_kernel_of_words():
    k = prompt_kernel(["score_9, 1girl, red_hair", "1girl, red_hair, score_9", "1boy, blue_sky", ""])
    assert k[0, 1] == pytest.approx(1.0) and k[0, 2] == 0 and np.allclose(np.diag(k), 1)
    assert 0 < prompt_kernel(["score_9, 1girl", "score_1, 1girl"])[0, 1] < 1


def test_cluster_shares_and_kl():
    labels = np.array([0, 0, 1, 2, -1])
    assert cluster_shares(labels, 4).tolist() == [0.5, 0.25, 0.25, 0.0]
    assert cluster_shares(labels, 3, np.array([1, 1, 2, 0, 5])).tolist() == [0.5, 0.5, 0.0]
    q = np.array([0.5, 0.25, 0.25])
    assert kl_divergence(np.array([200, 100, 100]), q) == pytest.approx(0, abs=1e-4)
    one = kl_divergence(np.array([10, 0, 0]), q)  # all in one cluster: far from q, but finite
    assert np.isfinite(one) and one > 0.3
    assert kl_divergence(np.array([6, 2, 2]), q) < kl_divergence(np.array([8, 1, 1]), q) < one
    assert effective_clusters(np.arange(3), q) == pytest.approx(np.exp(-(q * np.log(q)).sum()))
