"""Pairwise preferences over image embeddings: a Bradley–Terry model, how well it predicts, and which
pair to ask about next.

The model (Bradley & Terry 1952) with a linear utility u(x) = wᵀx over L2-normalised embeddings:

    P(a beats b) = σ(u(x_a) − u(x_b)) = σ(wᵀ(x_a − x_b))

is logistic regression without intercept on the differences d = x_a − x_b. It is fitted by
scikit-learn's ``LogisticRegression`` (L2 penalty ½‖w‖²/C) on each pair in both orders (d → 1,
−d → 0), so the fit does not depend on which side the winner was shown. C is chosen by k-fold
cross-validation over ``C_GRID`` unless given.

Which pair next (the rate view's active choice): the Laplace approximation of the posterior over w,
N(ŵ, Σ) with Σ = (Σ_pairs p(1 − p) d dᵀ + I/C)⁻¹, gives for a candidate pair the mean m = ŵᵀd and
variance v = dᵀΣd of its utility gap; the probit approximation p̄ = σ(m / √(1 + πv/8)) folds both
into one number, and the candidate whose p̄ is nearest ½ — the head is least sure, either because
the images look equally good to it or because it has seen nothing like them — is asked next
(MacKay 1992, "The evidence framework applied to classification networks").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


@dataclass
class Pairs:
    """Choices as row indices into an embedding matrix: ``winner[i]`` beat ``loser[i]`` with ``weight[i]``."""

    winner: np.ndarray
    loser: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, winner, loser, weight=None) -> Pairs:
        w = np.asarray(winner, np.int64)
        return cls(w, np.asarray(loser, np.int64), np.ones(len(w)) if weight is None else np.asarray(weight, float))

    def __len__(self) -> int:
        return len(self.winner)

    def take(self, idx) -> Pairs:
        return Pairs(self.winner[idx], self.loser[idx], self.weight[idx])

    def merged(self) -> Pairs:
        """Copies of one (winner, loser) as one pair with their weights summed: the same likelihood,
        fitted once (100,000 copies of one choice cost one row)."""
        both = np.stack([self.winner, self.loser], axis=1)
        unique, inverse = np.unique(both, axis=0, return_inverse=True)
        if len(unique) == len(both):
            return self
        weight = np.bincount(inverse.ravel(), weights=self.weight, minlength=len(unique))
        return Pairs(unique[:, 0].copy(), unique[:, 1].copy(), weight)

    def groups(self) -> np.ndarray:
        """One id per unordered pair {winner, loser}: copies of a choice, either way round, share it."""
        lo, hi = np.minimum(self.winner, self.loser), np.maximum(self.winner, self.loser)
        return np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)[1].ravel()


def _differences(emb: np.ndarray, pairs: Pairs) -> np.ndarray:
    return np.asarray(emb[pairs.winner], np.float64) - np.asarray(emb[pairs.loser], np.float64)


def fit(emb: np.ndarray, pairs: Pairs, c: float = 10.0) -> np.ndarray:
    """The utility weights w [D] (float64) of the Bradley–Terry model on ``pairs``."""
    from sklearn.linear_model import LogisticRegression

    if len(pairs) == 0:
        return np.zeros(emb.shape[1])
    pairs = pairs.merged()
    d = _differences(emb, pairs)
    x = np.concatenate([d, -d])
    y = np.r_[np.ones(len(d)), np.zeros(len(d))]
    model = LogisticRegression(C=c, fit_intercept=False, max_iter=1000, tol=1e-6)
    model.fit(x, y, sample_weight=np.r_[pairs.weight, pairs.weight])
    return model.coef_[0].astype(np.float64)


def accuracy(w: np.ndarray, emb: np.ndarray, pairs: Pairs) -> float:
    """The share of pairs whose winner the utility ranks higher (ties count half)."""
    if len(pairs) == 0:
        return float("nan")
    gap = _differences(emb, pairs) @ w
    return float(((gap > 0) + 0.5 * (gap == 0)).mean())


def folds(n: int, k: int, seed: int = 0, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """k folds of ``range(n)``; with ``groups`` (an id per item), every group wholly in one fold, so a
    choice made twice is never trained on and tested on at once."""
    if groups is None:
        return np.array_split(np.random.default_rng(seed).permutation(n), k)
    ids = np.unique(groups)
    fold_of = np.empty(ids.max() + 1 if len(ids) else 0, np.int64)
    for f, part in enumerate(np.array_split(np.random.default_rng(seed).permutation(ids), k)):
        fold_of[part] = f
    of = fold_of[groups]
    return [np.flatnonzero(of == f) for f in range(k)]


def kfold_correct(emb: np.ndarray, pairs: Pairs, extra: Pairs | None = None, k: int = 5, c: float = 10.0,
                  seed: int = 0, size: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
    """Per choice 1, ½ or 0: whether the model fitted on the other k − 1 folds of ``pairs`` (``size`` of
    them at random when given, for a learning curve) plus all of ``extra`` ranks its winner higher;
    and the folds. Only the choices are held out; extra evidence (stars) always trains. Folds are
    grouped by unordered pair (``Pairs.groups``): k must not exceed the number of distinct pairs."""
    correct = np.zeros(len(pairs))
    parts = folds(len(pairs), k, seed, pairs.groups())
    for held in parts:
        train = np.setdiff1d(np.arange(len(pairs)), held)
        if size is not None:
            train = np.random.default_rng(seed + 1).permutation(train)[:size]
        tr = pairs.take(train)
        if extra is not None and len(extra):
            tr = Pairs(np.r_[tr.winner, extra.winner], np.r_[tr.loser, extra.loser], np.r_[tr.weight, extra.weight])
        gap = _differences(emb, pairs.take(held)) @ fit(emb, tr, c)
        correct[held] = (gap > 0) + 0.5 * (gap == 0)
    return correct, parts


def kfold_accuracy(emb: np.ndarray, pairs: Pairs, extra: Pairs | None = None, k: int = 5, c: float = 10.0,
                   seed: int = 0, size: int | None = None) -> list[float]:  # fmt: skip
    """Held-out pairwise accuracy per fold (``kfold_correct``)."""
    correct, parts = kfold_correct(emb, pairs, extra, k, c, seed, size)
    return [float(correct[held].mean()) for held in parts]


def choose_c(emb: np.ndarray, pairs: Pairs, extra: Pairs | None = None, k: int = 5, seed: int = 0) -> dict:
    """Mean held-out accuracy by C over ``C_GRID``."""
    return {c: float(np.mean(kfold_accuracy(emb, pairs, extra, k, c, seed))) for c in C_GRID}


def posterior_cov(w: np.ndarray, emb: np.ndarray, pairs: Pairs, c: float) -> np.ndarray:
    """Σ = (Σ p(1 − p) d dᵀ + I/C)⁻¹, the Laplace approximation around ``w``."""
    dim = emb.shape[1]
    h = np.eye(dim) / c
    if len(pairs):
        d = _differences(emb, pairs)
        p = 1 / (1 + np.exp(-(d @ w)))
        h += (d * (pairs.weight * p * (1 - p))[:, None]).T @ d
    return np.linalg.inv(h)


def win_probability(w: np.ndarray, cov: np.ndarray | None, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """p̄(a beats b) for rows of candidate pairs (the probit-approximated posterior mean)."""
    d = np.asarray(xa, np.float64) - np.asarray(xb, np.float64)
    m = d @ w
    v = ((d @ cov) * d).sum(axis=1) if cov is not None else np.zeros(len(d))
    return 1 / (1 + np.exp(-m / np.sqrt(1 + np.pi * v / 8)))
