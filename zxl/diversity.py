"""Variety of a set of images, from their embeddings: what ``zxl eval`` reports for samples and the
diversity-aware repeats (pipeline/weigh.py) report for a catalog's draws.

- the **Vendi score** (Friedman & Dieng 2023, "The Vendi Score: A Diversity Evaluation Metric for
  Machine Learning"): exp of the Shannon entropy of the eigenvalues of K/n, K the cosine similarity
  matrix of n embeddings; 1 for n identical images, n for n orthogonal ones;
- the **mean pairwise cosine distance** 1 − cos over distinct pairs;
- the **effective number of clusters** of a draw: exp of the Shannon entropy of the share of draws
  each cluster gets; k when k clusters are drawn equally often, 1 when one cluster gets all.
"""

from __future__ import annotations

import numpy as np


def _unit(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def vendi(embeddings: np.ndarray, p: np.ndarray | None = None) -> float:
    """The Vendi score of [n, d] embeddings under cosine similarity; with ``p`` (a weight per row) the
    score of drawing row i with probability p_i: the eigenvalues of diag(√p) K diag(√p) (Friedman &
    Dieng's probability-weighted form; uniform p is the plain score)."""
    n = len(embeddings)
    if n == 0:
        return float("nan")
    x = _unit(embeddings)
    if p is None:
        p = np.full(n, 1.0 / n)
    w = np.asarray(p, np.float64) / np.sum(p)
    x = x * np.sqrt(w)[:, None]
    eig = np.linalg.eigvalsh(x @ x.T)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """The mean cosine distance 1 − cos over distinct pairs (0 for identical images)."""
    n = len(embeddings)
    if n < 2:
        return 0.0
    x = _unit(embeddings)
    sim = x @ x.T
    return float((1 - sim[np.triu_indices(n, 1)]).mean())


def effective_clusters(labels: np.ndarray, weights: np.ndarray) -> float:
    """exp(H) of the share of ``weights`` each cluster label holds (labels < 0 are left out)."""
    labels, weights = np.asarray(labels), np.asarray(weights, np.float64)
    keep = (labels >= 0) & (weights > 0)
    if not keep.any():
        return 0.0
    mass = np.bincount(labels[keep], weights=weights[keep])
    q = mass[mass > 0] / mass.sum()
    return float(np.exp(-(q * np.log(q)).sum()))
