"""Variety of a set of images, from their embeddings: what ``zxl eval`` reports for samples and the
diversity-aware repeats (pipeline/weigh.py) report for a catalog's draws.

- the **Vendi score** (Friedman & Dieng 2023, "The Vendi Score: A Diversity Evaluation Metric for
  Machine Learning"): exp of the Shannon entropy of the eigenvalues of K/n, K the cosine similarity
  matrix of n embeddings; 1 for n identical images, n for n orthogonal ones;
- the **mean pairwise cosine distance** 1 − cos over distinct pairs;
- the **effective number of clusters** of a draw: exp of the Shannon entropy of the share of draws
  each cluster gets; k when k clusters are drawn equally often, 1 when one cluster gets all;
- the **Conditional Vendi score** (Jalali, Ospanov, Gohari & Farnia 2024, arXiv 2411.02817): the
  variety of generated images beyond what their prompts explain, exp H(X|T) with the matrix
  entropies H(X|T) = H(K_X ∘ K_T / n) − H(K_T / n) (∘ the elementwise product of the image and
  prompt kernels, both with ones on the diagonal). n samples of one prompt: their Vendi score;
  prompts with nothing in common: the geometric mean of the per-prompt scores, weighted by samples;
  images that differ only as their prompts do: 1;
- the **KL divergence** of one distribution over clusters from another (e.g. the samples' from
  the catalog's), with half a count added to every cluster so an empty cluster stays finite.
"""

from __future__ import annotations

import numpy as np


def _unit(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def _entropy(kernel: np.ndarray) -> float:
    """The von Neumann entropy of a PSD kernel with unit diagonal, normalised by n (trace 1)."""
    eig = np.linalg.eigvalsh(kernel / len(kernel))
    eig = eig[eig > 1e-12]
    return float(-(eig * np.log(eig)).sum())


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


def prompt_kernel(prompts: list[str], embeddings: np.ndarray | None = None) -> np.ndarray:
    """The prompts' similarity matrix (unit diagonal): cosine of their text embeddings when given, else
    cosine of their bags of words (comma- and space-separated, lower-cased; ``score_9`` is one word),
    so two prompts sharing most tags are close whatever the order."""
    if embeddings is not None:
        x = _unit(embeddings)
        return np.clip(x @ x.T, -1.0, 1.0)
    words = [p.lower().replace(",", " ").split() for p in prompts]
    vocab = {w: i for i, w in enumerate(sorted({w for ws in words for w in ws}))}
    counts = np.zeros((len(prompts), max(1, len(vocab))))
    for r, ws in enumerate(words):
        for w in ws:
            counts[r, vocab[w]] += 1
    x = _unit(counts)
    k = x @ x.T
    np.fill_diagonal(k, 1.0)  # an empty prompt is still itself
    return k


def conditional_vendi(embeddings: np.ndarray, text_kernel: np.ndarray) -> float:
    """exp H(X|T) of [n, d] image embeddings (cosine kernel) given the prompts' [n, n] kernel."""
    n = len(embeddings)
    if n == 0:
        return float("nan")
    x = _unit(embeddings)
    kx = x @ x.T
    kt = np.asarray(text_kernel, np.float64)
    if kt.shape != (n, n):
        raise ValueError(f"text_kernel must be {n}×{n} (one row per image), got {kt.shape}")
    return float(np.exp(_entropy(kx * kt) - _entropy(kt)))


def cluster_shares(labels: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """The share of ``weights`` (1 each by default) per cluster 0..k−1, summing to 1 (labels < 0 left out)."""
    labels = np.asarray(labels)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    keep = labels >= 0
    mass = np.bincount(labels[keep], weights=w[keep], minlength=k)[:k]
    total = mass.sum()
    return mass / total if total > 0 else np.full(k, 1.0 / max(k, 1))


def kl_divergence(counts: np.ndarray, reference: np.ndarray) -> float:
    """KL(P ‖ Q) in nats: P the shares of ``counts`` plus half a count per cluster (Jeffreys), Q the
    ``reference`` shares (each floored at 1e-9)."""
    c = np.asarray(counts, np.float64) + 0.5
    p = c / c.sum()
    q = np.maximum(np.asarray(reference, np.float64), 1e-9)
    q = q / q.sum()
    return float((p * np.log(p / q)).sum())
