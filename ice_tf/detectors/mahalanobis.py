"""The Mahalanobis detector (Lee et al., NeurIPS 2018): class means and one tied
covariance of the penultimate training features.

Example:
  detector = Mahalanobis().fit(model, train_dataset)
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from ice_tf import gda

from ice_tf.detectors.base import (Detector, _PerModelFunction, _sign, _std_tensor, load_statistics,
                                   save_statistics)


def class_statistics(model, dataset, num_classes=None, verbose=1):
    """Class means and the tied covariance of penultimate training features.

    Accumulated in float64 over the batches of `dataset` ((images, labels)):
      μ_c = mean of z over class c,   Σ = (1/N) Σ_i (z_i - μ_{y_i})(z_i - μ_{y_i})^T,
    the maximum-likelihood estimate that sklearn's `EmpiricalCovariance` gives on
    class-centred features in the reference code (Lee et al. 2018).

    Returns:
      (means (K, d), covariance (d, d), counts (K,)).

    Example:
      means, covariance, counts = class_statistics(model, train_dataset)
    """
    num_classes = num_classes or model.num_classes
    count = int(tf.data.experimental.cardinality(dataset))
    progbar = keras.utils.Progbar(count if count >= 0 else None, unit_name="batch") if verbose else None
    features_of = tf.function(lambda x: model.features(x, training=False), reduce_retracing=True)
    accumulator = gda.Accumulator(num_classes)
    for images, labels in dataset:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
            raise ValueError(
                f"training labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}."
            )
        accumulator.update(np.asarray(features_of(images), np.float64), labels)
        if progbar is not None:
            progbar.add(1)
    if accumulator.sums is None:
        raise ValueError("the training dataset for Mahalanobis statistics is empty.")
    means, covariance, counts = accumulator.result()
    if gda.missing_classes(counts):
        raise ValueError(
            f"Mahalanobis needs training images of every class; classes "
            f"{gda.missing_classes(counts)} have none."
        )
    return means, covariance, counts


def tied_precision(covariance):
    """The pseudo-inverse Σ⁺ of the tied covariance.

    Eigenvalues below d · ε_float32 · λ_max count as zero, as in sklearn's `pinvh` on
    the float32 features the reference code gives it: a dead (always zero) feature
    then adds nothing to the distance instead of a huge 1/λ.

    Example:
      precision = tied_precision(np.eye(3))  # the identity
    """
    covariance = np.asarray(covariance, np.float64)
    values, vectors = np.linalg.eigh(covariance)
    cutoff = covariance.shape[0] * np.finfo(np.float32).eps * max(values.max(), 0.0)
    kept = values > cutoff
    return (vectors[:, kept] / values[kept]) @ vectors[:, kept].T


class Mahalanobis(Detector):
    """Mahalanobis detector (Lee et al. 2018; OpenOOD's MDS, the Energy code's last layer).

    Class means μ_c and ONE tied covariance Σ of the penultimate features z of the
    training set (`class_statistics`), precision P = Σ⁺ (`tied_precision`). Score:
      max_c  -½ (z - μ_c)^T P (z - μ_c),
    the class-conditional Gaussian log-likelihood without its constant
    -½ log det(2πΣ), which is the same for every class and every image (and infinite
    for a singular Σ), so it changes neither the argmax nor the ranking.

    With ε > 0 the input first moves to decrease the distance to the closest class ĉ:
      x' = x - ε · sign(∇_x ½ (z - μ_ĉ)^T P (z - μ_ĉ)) / std,   z = z(x).
    Distances are computed in float64 through a factor W of P (P = W W^T).

    Args:
      epsilon: input noise ε in [0, 1] pixel units (default 0 as OpenOOD's MDS; the
        Energy code tunes it, 0.0014 among its values).
      std: per-channel normalisation std of the images.
      stats_path: an .npz file where `fit` saves the statistics and from which later
        fits reload them while `fingerprint` matches (e.g. `<run>/mahalanobis_stats.npz`).
      fingerprint: a JSON-ready value identifying the model file and training set
        (see `model_fingerprint`); saved statistics with another one are refitted.
      refit: fit even when matching saved statistics exist.

    Example:
      detector = Mahalanobis().fit(model, train_dataset)
      scores = detector.score(model, images)
    """

    name = "mahalanobis"
    needs_fit = True

    def __init__(self, epsilon=0.0, std=1.0, stats_path=None, fingerprint=None, refit=False):
        if not epsilon >= 0:
            raise ValueError(f"Mahalanobis epsilon must be >= 0, got {epsilon}.")
        self.epsilon = float(epsilon)
        self.std = _std_tensor(std)
        self.stats_path = stats_path
        self.fingerprint = fingerprint
        self.refit = refit
        self.reused = False
        self.means = self.precision = self.covariance = self.counts = None
        self._function = _PerModelFunction(self._build)

    @property
    def fitted(self):
        return self.means is not None

    @property
    def options(self):
        return {"epsilon": self.epsilon, "std": self.std.numpy().tolist(),
                "stats_path": self.stats_path}

    def set_statistics(self, means, precision):
        """Uses given class means (K, d) and precision (d, d)."""
        means = np.asarray(means, np.float64)
        precision = np.asarray(precision, np.float64)
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError(
                f"means must be (K, d) and precision (d, d); got {means.shape}, {precision.shape}."
            )
        values, vectors = np.linalg.eigh((precision + precision.T) / 2)
        whiten = vectors * np.sqrt(np.clip(values, 0.0, None))  # P = W W^T
        self.means, self.precision = means, precision
        self._whiten = tf.constant(whiten)
        self._centres = tf.constant(means @ whiten)  # μ_c W
        self._function = _PerModelFunction(self._build)
        return self

    def fit(self, model, train_dataset, verbose=1):
        """Class means and tied precision from training features; reuses `stats_path`."""
        self.reused = False
        if self.stats_path and not self.refit and os.path.exists(self.stats_path):
            stored = load_statistics(self.stats_path, self.fingerprint)
            if stored is not None and stored["means"].shape[0] == model.num_classes:
                if verbose:
                    print(f"Mahalanobis statistics: reusing {self.stats_path}")
                self.reused = True
                self.covariance = stored.get("covariance")
                self.counts = stored.get("counts")
                return self.set_statistics(stored["means"], stored["precision"])
            if verbose:
                print(f"Mahalanobis statistics in {self.stats_path} are stale; refitting.")
        if verbose:
            print("Mahalanobis statistics: class means and tied covariance of training features")
        means, covariance, counts = class_statistics(model, train_dataset, verbose=verbose)
        precision = tied_precision(covariance)
        self.covariance, self.counts = covariance, counts
        if self.stats_path:
            save_statistics(self.stats_path, means, precision, covariance, counts, self.fingerprint)
        return self.set_statistics(means, precision)

    def log_likelihoods(self, features):
        """-½ (z - μ_c)^T P (z - μ_c) for every class: (batch, K) float64."""
        a = tf.matmul(tf.cast(features, tf.float64), self._whiten)
        squared = (tf.reduce_sum(a * a, axis=1, keepdims=True)
                   - 2.0 * tf.matmul(a, self._centres, transpose_b=True)
                   + tf.reduce_sum(self._centres * self._centres, axis=1)[None, :])
        return -0.5 * tf.maximum(squared, 0.0)

    def _build(self, model):
        epsilon, std = self.epsilon, self.std

        def mahalanobis(images):
            images = tf.cast(images, tf.float32)
            if epsilon == 0:
                features = model.features(images, training=False)
                outputs = tf.cast(model.head(features), tf.float32)
                return tf.reduce_max(self.log_likelihoods(features), axis=-1), outputs
            with tf.GradientTape() as tape:
                tape.watch(images)
                features = model.features(images, training=False)
                likelihoods = self.log_likelihoods(features)
                closest = tf.stop_gradient(tf.argmax(likelihoods, axis=-1))
                # ½ d(z, μ_ĉ) summed: each image's gradient depends on that image only.
                loss = -tf.reduce_sum(tf.gather(likelihoods, closest, axis=1, batch_dims=1))
            outputs = tf.cast(model.head(features), tf.float32)
            perturbed = images - epsilon * _sign(tape.gradient(loss, images)) / std
            likelihoods = self.log_likelihoods(model.features(perturbed, training=False))
            return tf.reduce_max(likelihoods, axis=-1), outputs

        return mahalanobis

    def score(self, model, images):
        if not self.fitted:
            raise ValueError(
                "the Mahalanobis detector has no statistics: call fit(model, train_dataset) first "
                "(ice-tf evaluate does this from the run's config)."
            )
        if not (hasattr(model, "features") and hasattr(model, "head")):
            raise ValueError("Mahalanobis needs a model with `features` and `head` (an OODModel).")
        return self._function(model, tf.convert_to_tensor(images, tf.float32))
