"""Post-hoc detectors on the penultimate features z (the head's inputs), each fitted on
the training set's features: KNN, ViM, ReAct, ASH-S, SCALE and the relative
Mahalanobis distance. Scores are higher for more in-distribution inputs; defaults are
the papers'.

| name                   | score of an input with features z and head f              | fitted           |
|------------------------|------------------------------------------------------------|------------------|
| `knn`                  | -‖ẑ - ẑ_(k)‖, ẑ = z/‖z‖, ẑ_(k) its k-th nearest training ẑ (k = 50) | the bank of ẑ |
| `vim`                  | logsumexp f(z) - α ‖(z - u) R‖ (residual R of the principal subspace) | u, R, α |
| `react`                | logsumexp f(min(z, c)), c the 90th percentile of training activations | c |
| `ash`                  | logsumexp f(ASH-S(z)): the top 10% kept, scaled by exp(Σz / Σkept) | none |
| `scale`                | logsumexp f(z · exp(Σz / Σ top 10%))                        | none |
| `relative_mahalanobis` | max_c -MD_c(z) + MD_0(z), MD_0 of one Gaussian of all training z | means, Σ, μ_0, Σ_0 |

Each fitted detector saves its statistics in `stats_path` (beside the model, tied to
the model file's hash and the training images; `ice_tf.experiment.evaluation.for_run`) and reuses
them while that fingerprint matches.

Example:
  knn = KNN().fit(model, train_batches)
  scores, outputs = knn.score(model, images)
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from ice_tf import gda, layers
from ice_tf.detectors.base import (Detector, _PerModelFunction, load_arrays, save_arrays,
                                   training_features)
from ice_tf.detectors.mahalanobis import tied_precision


def _energy(outputs):
    return tf.reduce_logsumexp(tf.cast(outputs, tf.float32), axis=-1)


class FeatureDetector(Detector):
    """Base of the detectors that score the penultimate features: `statistics_of` fits
    arrays on the training features (saved in `stats_path`, reused while `fingerprint`
    matches), `score_features` scores a batch from its features and head outputs.

    Args:
      stats_path: an .npz file for the fitted statistics (None: kept in memory only).
      fingerprint: a JSON-ready value identifying the model file and training set.
      refit: fit even when matching saved statistics exist.

    Example:
      class MeanNorm(FeatureDetector):
          name, required = "mean_norm", ("norm",)
          def statistics_of(self, model, features, labels):
              return {"norm": np.linalg.norm(features, axis=1).mean(keepdims=True)}
          def score_features(self, model, features, outputs):
              return -tf.abs(tf.norm(features, axis=1) - self.constants["norm"][0])
    """

    needs_fit = True
    required = ()  # the names of the fitted arrays
    constant_dtype = tf.float32  # of the fitted arrays on the device

    def __init__(self, stats_path=None, fingerprint=None, refit=False):
        self.stats_path, self.fingerprint, self.refit = stats_path, fingerprint, refit
        self.statistics = None if self.required else {}
        self.constants = {}
        self.reused = False
        self._function = _PerModelFunction(self._build)

    @property
    def fitted(self):
        return self.statistics is not None

    @property
    def options(self):
        return {"stats_path": self.stats_path}

    def statistics_of(self, model, features, labels):
        """The fitted arrays {name: array} of the training `features` (N, d) float64."""
        raise NotImplementedError

    def score_features(self, model, features, outputs):
        """Scores (batch,) of one batch: its features (batch, d) and head outputs (batch, K)."""
        raise NotImplementedError

    def set_statistics(self, statistics):
        """Uses fitted arrays {name: array} (what `statistics_of` returns). Returns self."""
        self.statistics = {name: np.asarray(statistics[name]) for name in self.required}
        self.constants = {name: tf.constant(value, self.constant_dtype)
                          for name, value in self.statistics.items()}
        self._function = _PerModelFunction(self._build)
        return self

    def fit(self, model, train_dataset, verbose=1):
        """Fits (or reloads) the statistics on (images, labels) training batches."""
        self.reused = False
        if not self.required:
            return self
        if self.stats_path and not self.refit and os.path.exists(self.stats_path):
            stored = load_arrays(self.stats_path, self.fingerprint, self.required)
            if stored is not None:
                self.reused = True
                if verbose:
                    print(f"{self.name} statistics: reusing {self.stats_path}")
                return self.set_statistics(stored)
        features, labels = training_features(model, train_dataset, verbose=verbose)
        statistics = self.statistics_of(model, features, labels)
        if self.stats_path:
            save_arrays(self.stats_path, statistics, self.fingerprint)
        return self.set_statistics(statistics)

    def _build(self, model):
        def detect(images):
            features = tf.cast(model.features(tf.cast(images, tf.float32), training=False),
                               tf.float32)
            outputs = tf.cast(model.head(features), tf.float32)
            return self.score_features(model, features, outputs), outputs

        return detect

    def score(self, model, images):
        if not self.fitted:
            raise ValueError(f"the {self.name} detector has no statistics: call fit(model, "
                             "train_dataset) first (ice_tf.evaluate: pass train_data).")
        return self._function(model, tf.convert_to_tensor(images, tf.float32))


def _normalised(features):
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


class KNN(FeatureDetector):
    """Deep nearest neighbours (Sun et al., ICML 2022, Eq. 3): with ẑ = z / ‖z‖, the score is
    -‖ẑ - ẑ_(k)‖, ẑ_(k) the k-th nearest of the normalised training features (the whole
    training set as the bank; the paper's k = 50 for CIFAR). Exact search on the device,
    in chunks of the bank. OpenOOD ranks by the squared distance: the same order.

    Example:
      scores, outputs = KNN(k=50).fit(model, train_batches).score(model, images)
    """

    name = "knn"
    required = ("bank",)
    BANK_CHUNK = 8192

    def __init__(self, k=50, **kwargs):
        if int(k) < 1:
            raise ValueError(f"knn k must be >= 1, got {k}.")
        self.k = int(k)
        super().__init__(**kwargs)

    @property
    def options(self):
        return {**super().options, "k": self.k}

    def statistics_of(self, model, features, labels):
        return {"bank": _normalised(features).astype(np.float32)}

    def score_features(self, model, features, outputs):
        bank = self.constants["bank"]
        k = min(self.k, int(bank.shape[0]))
        query = tf.math.l2_normalize(features, axis=1, epsilon=1e-24)
        nearest = []
        for start in range(0, int(bank.shape[0]), self.BANK_CHUNK):
            similarity = tf.matmul(query, bank[start:start + self.BANK_CHUNK], transpose_b=True)
            nearest.append(tf.math.top_k(similarity, k=min(k, int(similarity.shape[1]))).values)
        kth = tf.math.top_k(tf.concat(nearest, axis=1), k=k).values[:, -1]
        return -tf.sqrt(tf.maximum(2.0 - 2.0 * kth, 0.0))


def _head_outputs(model, features, batch=4096):
    return np.concatenate([
        np.asarray(model.head(tf.constant(features[start:start + batch], tf.float32)), np.float64)
        for start in range(0, len(features), batch)])


def vim_dimension(feature_size):
    """The principal subspace's size D for features of `feature_size` N, ViM's rule:
    1000 for N >= 2048, 512 for N >= 768, N // 2 below.

    Example:
      vim_dimension(128)  # 64
    """
    return 1000 if feature_size >= 2048 else 512 if feature_size >= 768 else feature_size // 2


class ViM(FeatureDetector):
    """Virtual-logit matching (Wang et al., CVPR 2022, Eqs. 4-7). With the origin u =
    -pinv(Wᵀ) b of the linear head f(z) = Wᵀz + b (the feature mean for a Gaussian
    head, which has no linear map), the principal subspace of the training covariance of
    z - u (its D largest eigenvectors; `vim_dimension`) and R its orthogonal complement,
    the virtual logit is α ‖(z - u) R‖ with α = mean(max_i f_i) / mean(‖(z - u) R‖) over
    the training set, and the score is logsumexp f(z) - α ‖(z - u) R‖.

    Args:
      dim: D; None for the paper's rule of the feature size.

    Example:
      scores, outputs = ViM().fit(model, train_batches).score(model, images)
    """

    name = "vim"
    required = ("origin", "residual", "alpha")

    def __init__(self, dim=None, **kwargs):
        self.dim = None if dim is None else int(dim)
        super().__init__(**kwargs)

    @property
    def options(self):
        return {**super().options, "dim": self.dim}

    def statistics_of(self, model, features, labels):
        size = features.shape[1]
        dim = vim_dimension(size) if self.dim is None else self.dim
        if not 0 < dim < size:
            raise ValueError(f"vim dim must lie in [1, {size - 1}] for {size} features, got {dim}.")
        if layers.is_gaussian_head(model.head):
            origin = features.mean(axis=0)
        else:
            kernel, bias = (np.asarray(w, np.float64) for w in model.head.get_weights()[:2])
            origin = -np.linalg.pinv(kernel.T) @ bias
        centred = features - origin
        covariance = centred.T @ centred / len(centred)
        values, vectors = np.linalg.eigh(covariance)
        residual = vectors[:, np.argsort(-values)[dim:]]
        virtual = np.linalg.norm(centred @ residual, axis=1)
        alpha = _head_outputs(model, features).max(axis=1).mean() / max(virtual.mean(), 1e-12)
        return {"origin": origin, "residual": residual, "alpha": np.asarray([alpha])}

    def score_features(self, model, features, outputs):
        virtual = tf.norm(tf.matmul(features - self.constants["origin"], self.constants["residual"]),
                          axis=1)
        return _energy(outputs) - self.constants["alpha"][0] * virtual


class _PercentileDetector(FeatureDetector):
    """A feature detector with one percentile p of the activations (90: ReAct's, ASH's, SCALE's)."""

    def __init__(self, percentile=90.0, **kwargs):
        if not 0 < percentile < 100:
            raise ValueError(f"{self.name} percentile must lie in (0, 100), got {percentile}.")
        self.percentile = float(percentile)
        super().__init__(**kwargs)

    @property
    def options(self):
        return {**super().options, "percentile": self.percentile}


class ReAct(_PercentileDetector):
    """Rectified activations (Sun et al., NeurIPS 2021, Eq. 1): features clipped at c, the
    `percentile` (90, the paper's) of every training activation, flattened; the score is
    the energy logsumexp f(min(z, c)) of the head on the clipped features.

    Example:
      scores, outputs = ReAct(percentile=90).fit(model, train_batches).score(model, images)
    """

    name = "react"
    required = ("threshold",)

    def statistics_of(self, model, features, labels):
        return {"threshold": np.asarray([np.percentile(features.ravel(), self.percentile)])}

    def score_features(self, model, features, outputs):
        clipped = tf.minimum(features, self.constants["threshold"][0])
        return _energy(model.head(clipped))


def _kept_count(size, percentile):
    """Activations ASH and SCALE keep: n - round(n · p / 100), at least 1."""
    return max(1, size - int(np.round(size * percentile / 100.0)))


def _top_sum(features, percentile):
    """(Σ z, the top activations' mask, Σ of the top activations) per row."""
    keep = _kept_count(int(features.shape[1]), percentile)
    threshold = tf.math.top_k(features, k=keep).values[:, -1:]
    mask = tf.cast(features >= threshold, features.dtype)
    return tf.reduce_sum(features, axis=1), mask, tf.reduce_sum(features * mask, axis=1)


class ASH(_PercentileDetector):
    """ASH-S (Djurisic et al., ICLR 2023, Eq. 3): per input, the activations below its
    `percentile` (90, the paper's) are set to 0 and the rest scaled by exp(s1 / s2), s1
    the sum of every activation and s2 of those kept; the score is the energy of the
    head on the shaped features. Needs no fit.

    Example:
      scores, outputs = ASH(percentile=90).score(model, images)
    """

    name = "ash"
    needs_fit = False

    def score_features(self, model, features, outputs):
        total, mask, kept = _top_sum(features, self.percentile)
        shaped = features * mask * tf.exp(total / tf.maximum(kept, 1e-12))[:, None]
        return _energy(model.head(shaped))


class SCALE(ASH):
    """SCALE (Xu et al., ICLR 2024, Eq. 5): ASH-S's scale exp(s1 / s2) on every activation,
    none pruned (s2 the sum of the top (100 - p)%, p = 90 the paper's); the score is the
    energy of the head on the scaled features. Needs no fit.

    Example:
      scores, outputs = SCALE(percentile=90).score(model, images)
    """

    name = "scale"

    def score_features(self, model, features, outputs):
        total, _, kept = _top_sum(features, self.percentile)
        scaled = features * tf.exp(total / tf.maximum(kept, 1e-12))[:, None]
        return _energy(model.head(scaled))


class RelativeMahalanobis(FeatureDetector):
    """The relative Mahalanobis distance (Ren et al., 2021, Eq. 4): with MD_c the distance
    to class c under the tied covariance (as `Mahalanobis`) and MD_0 the distance to one
    Gaussian of all training features (mean μ_0, covariance Σ_0), the score is
    max_c -(MD_c(z) - MD_0(z)) = -min_c MD_c(z) + MD_0(z).

    Example:
      scores, outputs = RelativeMahalanobis().fit(model, train_batches).score(model, images)
    """

    name = "relative_mahalanobis"
    required = ("means", "precision", "background_mean", "background_precision")
    constant_dtype = tf.float64  # a difference of two distances: float32 would cancel digits

    def statistics_of(self, model, features, labels):
        accumulator = gda.Accumulator(int(model.num_classes))
        accumulator.update(features, labels)
        means, covariance, counts = accumulator.result()
        if gda.missing_classes(counts):
            raise ValueError(f"relative_mahalanobis needs training images of every class; classes "
                             f"{gda.missing_classes(counts)} have none.")
        centred = features - features.mean(axis=0)
        background = centred.T @ centred / len(centred)
        return {"means": means, "precision": tied_precision(covariance),
                "background_mean": features.mean(axis=0),
                "background_precision": tied_precision(background)}

    @staticmethod
    def _distances(features, means, precision):
        differences = features[:, None, :] - means[None, :, :]
        return tf.einsum("bkd,de,bke->bk", differences, precision, differences)

    def score_features(self, model, features, outputs):
        constants, features = self.constants, tf.cast(features, tf.float64)
        class_distances = self._distances(features, constants["means"], constants["precision"])
        background = self._distances(features, constants["background_mean"][None, :],
                                     constants["background_precision"])[:, 0]
        return -tf.reduce_min(class_distances, axis=1) + background


FEATURE_DETECTORS = {detector.name: detector for detector in
                     (KNN, ViM, ReAct, ASH, SCALE, RelativeMahalanobis)}

__all__ = ["FeatureDetector", "KNN", "ViM", "ReAct", "ASH", "SCALE", "RelativeMahalanobis",
           "FEATURE_DETECTORS", "vim_dimension"]
