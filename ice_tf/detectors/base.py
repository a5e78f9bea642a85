"""The detector protocol and what every detector shares: `Detector`, the output scores
(`OutputScore`), a per-model compiled function, the input-step sign and std, and the
statistics file of a fitted detector (saved beside the model, tied to its hash).

Example:
  OutputScore("energy").score(model, images)  # (scores, head outputs)
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from ice_tf import atomic_io
from ice_tf import scores as scores_lib

_STATS_FORMAT = 1


def _sign(gradient):
    """sign(g) with sign(0) = +1, as `torch.ge(grad, 0)` in the reference code."""
    return tf.where(gradient >= 0, tf.ones_like(gradient), -tf.ones_like(gradient))


def _std_tensor(std):
    std = np.asarray(std, np.float32).reshape(-1)
    if std.size == 0 or not np.all(std > 0):
        raise ValueError(f"std must be positive (a scalar or one value per channel), got {std}.")
    return tf.constant(std)


class _PerModelFunction:
    """A `tf.function` built once per model (a new model gets a new trace)."""

    def __init__(self, build):
        self._build = build
        self._model = None
        self._function = None

    def __call__(self, model, *args):
        if self._model is not model:
            self._model, self._function = model, tf.function(self._build(model), reduce_retracing=True)
        return self._function(*args)


class Detector:
    """Base class: `fit(model, train_dataset)` once, then `score(model, images)` per batch.

    Example:
      class MaxLogit(Detector):
          def score(self, model, images):
              return tf.reduce_max(model(images), axis=-1)
    """

    name = "detector"
    needs_fit = False

    def fit(self, model, train_dataset, verbose=1):
        """Fits statistics on (images, labels) training batches; a no-op here. Returns self."""
        del model, train_dataset, verbose
        return self

    @property
    def fitted(self):
        return True

    @property
    def options(self):
        """The detector's hyperparameters (recorded with its results)."""
        return {}

    def score(self, model, images):
        """(scores (batch,), head outputs (batch, K)) for one batch of images."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class OutputScore(Detector):
    """A score of the head outputs: a name from `ice_tf.scores` (msp, max_logit, energy,
    ice) or a function outputs (batch, K) -> (batch,).

    Example:
      OutputScore("energy").score(model, images)
    """

    def __init__(self, score):
        self.fn = scores_lib.get(score)
        self.name = score if isinstance(score, str) else getattr(score, "__name__", "custom")
        self._function = _PerModelFunction(self._build)

    def _build(self, model):
        def output_score(images):
            outputs = tf.cast(model(images, training=False), tf.float32)
            return self.fn(outputs), outputs

        return output_score

    def score(self, model, images):
        return self._function(model, tf.convert_to_tensor(images, tf.float32))


def model_fingerprint(path):
    """sha256 and size of a model file: saved statistics are tied to the exact weights.

    Example:
      model_fingerprint("runs/ice/model.keras")  # a sha256 hex digest
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def save_arrays(path, arrays, fingerprint):
    """Writes a fitted detector's statistics (`arrays`, name -> array) and the
    `fingerprint` they belong to as an .npz file, atomically (never half a file).

    Example:
      save_arrays("runs/ice/knn_stats.npz", {"bank": bank}, fingerprint)
    """
    with atomic_io.atomic_stream(path, "wb", suffix=".npz") as stream:
        np.savez(stream, format_version=np.int64(_STATS_FORMAT),
                 fingerprint=np.str_(json.dumps(fingerprint, sort_keys=True)), **arrays)


def load_arrays(path, fingerprint=None, required=()):
    """The saved statistics dict, or None when missing, unreadable, lacking a `required`
    array or made for another fingerprint (another model file or training set: stale).

    Example:
      stats = load_arrays("runs/ice/knn_stats.npz", fingerprint, required=("bank",))
    """
    try:
        with np.load(path, allow_pickle=False) as stored:
            values = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError):
        return None
    if not {"format_version", "fingerprint", *required} <= set(values) or int(
            values["format_version"]) != _STATS_FORMAT:
        return None
    if json.loads(str(values["fingerprint"])) != json.loads(json.dumps(fingerprint, sort_keys=True)):
        return None
    return values


def save_statistics(path, means, precision, covariance, counts, fingerprint):
    """Writes Mahalanobis statistics to an .npz file atomically (`save_arrays`).

    Example:
      save_statistics("stats.npz", means, precision, covariance, counts, fingerprint)
    """
    save_arrays(path, {"means": means, "precision": precision, "covariance": covariance,
                       "counts": counts}, fingerprint)


def load_statistics(path, fingerprint=None):
    """The saved Mahalanobis statistics dict, or None (see `load_arrays`).

    Example:
      stats = load_statistics("stats.npz", fingerprint=model_fingerprint(path))
    """
    return load_arrays(path, fingerprint, required=("means", "precision"))


def training_features(model, dataset, verbose=0, purpose="the detector's statistics"):
    """(features (N, d) float64, labels (N,) int64) of the penultimate features of every
    (images, labels) batch of `dataset`, in inference mode; `purpose` names what the
    features are for in the error on an empty dataset.

    Example:
      features, labels = training_features(model, train_batches)
    """
    features_of = tf.function(lambda x: model.features(x, training=False), reduce_retracing=True)
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(features_of(images), np.float64))
        labels.append(np.asarray(batch_labels).reshape(-1).astype(np.int64))
        if verbose:
            print(f"\rtraining features: {sum(len(f) for f in features)}", end="", flush=True)
    if verbose:
        print()
    if not features:
        raise ValueError(f"the training dataset for {purpose} is empty.")
    return np.concatenate(features), np.concatenate(labels)
