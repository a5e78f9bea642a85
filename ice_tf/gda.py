"""Gaussian discriminant analysis statistics: class means and the tied covariance.

The statistics of Eq. (0.11) with one L shared by all classes: class means
μ_k = mean of z over class k and the pooled within-class covariance
Σ = (1/N) Σ_i (z_i - μ_{y_i})(z_i - μ_{y_i})^T (the maximum-likelihood estimate;
sklearn's `EmpiricalCovariance` on class-centred features, as the Mahalanobis
reference code uses). One module computes them for the Gaussian head's fit
(`GaussianLayer.initialize_from_features`), the Mahalanobis detector, the toy
models of Figs. 2-3 and the distribution-shift analysis; all in float64.

  class_means(z, y, K)       in memory; NaN rows for classes without samples
  tied_covariance(z, y, μ)   in memory, two-pass (centred features)
  fit(z, y, K)               both, as `Statistics(means, covariance, counts)`
  Accumulator(K)             the same, streamed over batches (`update`, `result`)

Example:
  stats = fit(features, labels, num_classes=10)
  accumulator = Accumulator(10)
  for z, y in batches:
      accumulator.update(z, y)
  means, covariance, counts = accumulator.result()
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Statistics(NamedTuple):
    """means (K, d), tied covariance (d, d) and class counts (K,), float64 / int64.

    Example:
      stats = fit(features, labels, num_classes=10)
      stats.means.shape, stats.covariance.shape  # (10, d), (d, d)
    """

    means: np.ndarray
    covariance: np.ndarray
    counts: np.ndarray


def _rows_and_labels(features, labels, num_classes):
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be (n, d) with one label each; got {features.shape} and {labels.shape[0]} labels."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values from {labels.min()} to {labels.max()}."
        )
    return features, labels


def class_sums(features, labels, num_classes):
    """(sums (K, d), counts (K,)) of the features of each class.

    Example:
      sums, counts = class_sums(features, labels, num_classes=10)
    """
    features, labels = _rows_and_labels(features, labels, num_classes)
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums, np.bincount(labels, minlength=num_classes).astype(np.int64)


def class_means(features, labels, num_classes):
    """(K, d) float64 per-class means; NaN rows for classes without samples.

    Example:
      means = class_means(features, labels, num_classes=10)  # (10, d) float64
    """
    sums, counts = class_sums(features, labels, num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def missing_classes(counts):
    """The classes with no samples, as a list.

    Example:
      missing_classes(np.array([5, 0, 3]))  # [1]
    """
    return np.flatnonzero(np.asarray(counts) == 0).tolist()


def tied_covariance(features, labels, means):
    """The pooled within-class covariance (1/N) Σ_i (z_i - μ_{y_i})(z_i - μ_{y_i})^T.

    Example:
      covariance = tied_covariance(features, labels, class_means(features, labels, 10))
    """
    features, labels = _rows_and_labels(features, labels, len(means))
    centred = features - np.asarray(means, dtype=np.float64)[labels]
    return centred.T @ centred / features.shape[0]


def fit(features, labels, num_classes):
    """`Statistics` of in-memory features (two-pass: means, then centred covariance).

    Example:
      means, covariance, counts = fit(features, labels, num_classes=10)
    """
    means = class_means(features, labels, num_classes)
    counts = class_sums(features, labels, num_classes)[1]
    if missing_classes(counts):
        return Statistics(means, np.full((means.shape[1],) * 2, np.nan), counts)
    return Statistics(means, tied_covariance(features, labels, means), counts)


class Accumulator:
    """The same statistics streamed over batches, in float64.

    One pass: Σ = (Σ_i z z^T - Σ_k N_k μ_k μ_k^T) / N, the within-class scatter.

    Example:
      accumulator = Accumulator(num_classes=10)
      for features, labels in batches:
          accumulator.update(features, labels)
      stats = accumulator.result()
    """

    def __init__(self, num_classes):
        self.num_classes = int(num_classes)
        self.sums = self.counts = self.scatter = None

    def update(self, features, labels):
        """Adds one batch of (n, d) features with their labels."""
        sums, counts = class_sums(features, labels, self.num_classes)
        features = np.asarray(features, dtype=np.float64)
        if self.sums is None:
            self.sums, self.counts = np.zeros_like(sums), np.zeros_like(counts)
            self.scatter = np.zeros((features.shape[1],) * 2)
        self.sums += sums
        self.counts += counts
        self.scatter += features.T @ features
        return self

    def result(self):
        """`Statistics` of everything added; raises ValueError when nothing was."""
        if self.sums is None:
            raise ValueError("no features were added.")
        with np.errstate(invalid="ignore", divide="ignore"):
            means = self.sums / self.counts[:, None]
        present = self.counts > 0
        weighted = (means[present] * self.counts[present, None]).T @ means[present]
        covariance = (self.scatter - weighted) / self.counts.sum()
        return Statistics(means, (covariance + covariance.T) / 2, self.counts.copy())


__all__ = ["Statistics", "class_sums", "class_means", "missing_classes", "tied_covariance",
           "fit", "Accumulator"]
