"""zxl/preference.py: the Bradley–Terry fit, held-out accuracy and the active pair choice."""

import numpy as np

from zxl import preference


def _world(n=300, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w_true = rng.normal(size=dim)
    return x, w_true, rng


def _choose(x, w_true, rng, n_pairs, temperature=0.05):
    a = rng.integers(len(x), size=n_pairs)
    b = (a + 1 + rng.integers(len(x) - 1, size=n_pairs)) % len(x)
    u = x @ w_true
    p = 1 / (1 + np.exp(-(u[a] - u[b]) / temperature))
    a_wins = rng.random(n_pairs) < p
    return preference.Pairs.of(np.where(a_wins, a, b), np.where(a_wins, b, a))


def test_fit_recovers_the_direction_and_does_not_care_which_side_won():
    x, w_true, rng = _world()
    pairs = _choose(x, w_true, rng, 400)
    w = preference.fit(x, pairs, 10.0)
    assert np.corrcoef(w, w_true)[0, 1] > 0.9
    test = _choose(x, w_true, rng, 2000)
    assert preference.accuracy(w, x, test) > 0.85
    swapped = preference.fit(x, preference.Pairs.of(pairs.winner[::-1], pairs.loser[::-1]), 10.0)
    np.testing.assert_allclose(swapped, w, rtol=1e-4, atol=1e-6)  # order of the choices does not matter
    assert preference.accuracy(np.zeros_like(w), x, test) == 0.5  # ties count half


def test_held_out_accuracy_grows_with_choices():
    x, w_true, rng = _world(seed=1)
    pairs = _choose(x, w_true, rng, 600)
    small = np.mean(preference.kfold_accuracy(x, pairs, None, 5, 10.0, size=20))
    large = np.mean(preference.kfold_accuracy(x, pairs, None, 5, 10.0))
    assert large > small + 0.05 and large > 0.85
    assert set(preference.choose_c(x, pairs.take(np.arange(100)), k=3)) == set(preference.C_GRID)


def test_the_head_is_least_sure_where_it_has_seen_nothing():
    x, w_true, rng = _world(seed=2)
    seen = np.arange(150)
    pairs = _choose(x[seen], w_true, rng, 300)
    w = preference.fit(x[seen], pairs, 10.0)
    cov = preference.posterior_cov(w, x[seen], pairs, 10.0)
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0
    # the same mean gap, more posterior variance: pulled toward 1/2
    d = rng.normal(size=x.shape[1])
    d *= 2 / (d @ w)
    p_certain = preference.win_probability(w, np.zeros_like(cov), d[None], np.zeros((1, len(d))))[0]
    p_unsure = preference.win_probability(w, cov * 50, d[None], np.zeros((1, len(d))))[0]
    assert p_certain > p_unsure > 0.5
