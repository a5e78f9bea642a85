"""OOD detectors: output scores and the post-hoc ODIN and Mahalanobis detectors.

A detector turns a batch of (normalised) images into OOD scores, higher meaning
more in-distribution, and also returns the head outputs of the clean images (for
accuracy). Some need statistics of the training set first (`fit`).

| name          | score                                                  | fit            |
|---------------|--------------------------------------------------------|----------------|
| `msp`, `max_logit`, `energy`, `ice` | `ice_tf.scores` of the head outputs | no         |
| `odin`        | max softmax(f(x')/T), x' perturbed (Liang et al. 2018) | no             |
| `mahalanobis` | max_c tied-Gaussian log-likelihood of z(x') (Lee et al. 2018) | means, Σ |

Both post-hoc detectors follow the Energy code (wetliu/energy_ood,
`utils/score_calculation.py`): the input step is the sign of the gradient (a zero
gradient counts as +1), divided per channel by the normalisation std, so that ε is
measured in [0, 1] pixel units although the images are already normalised.

Example:
  detector = detectors.get("odin", std=data.normalization("cifar10")[1])
  scores, outputs = detector.score(model, images)
  mahalanobis = detectors.get("mahalanobis").fit(model, train_dataset)
  results = evaluation.evaluate_model(model, in_ds, ood_ds, score=mahalanobis)
"""

from __future__ import annotations

import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from ice_tf import atomic_io, gda, run_folder
from ice_tf import scores as scores_lib

STATS_FILE = run_folder.STATS_FILE
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


class ODIN(Detector):
    """ODIN (Liang et al. 2018): temperature scaling and input perturbation.

    With ŷ = argmax f(x) and S(x; T) = softmax(f(x) / T),
      x' = x - ε · sign(-∇_x log S_ŷ(x; T)) / std,   score = max_i S_i(x'; T),
    where f is the head output (logits, or h for a Gaussian head). The step
    lowers the cross-entropy of the predicted class, raising the softmax score
    more for in-distribution images than for OOD ones.

    Args:
      temperature: T (default 1000, as ODIN and OpenOOD).
      epsilon: ε in [0, 1] pixel units (default 0.0014, OpenOOD's; 0 = temperature only).
      std: per-channel normalisation std of the images (`data.normalization(name)[1]`);
        1 for images that are not normalised.

    Example:
      odin = ODIN(temperature=1000.0, epsilon=0.0014, std=0.353)
      scores = odin.score(model, images)
    """

    name = "odin"

    def __init__(self, temperature=1000.0, epsilon=0.0014, std=1.0):
        if not temperature > 0:
            raise ValueError(f"ODIN temperature must be > 0, got {temperature}.")
        if not epsilon >= 0:
            raise ValueError(f"ODIN epsilon must be >= 0, got {epsilon}.")
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.std = _std_tensor(std)
        self._function = _PerModelFunction(self._build)

    @property
    def options(self):
        return {"temperature": self.temperature, "epsilon": self.epsilon,
                "std": self.std.numpy().tolist()}

    def _build(self, model):
        temperature, epsilon, std = self.temperature, self.epsilon, self.std

        def odin(images):
            images = tf.cast(images, tf.float32)
            if epsilon == 0:  # temperature scaling only
                outputs = tf.cast(model(images, training=False), tf.float32)
                shifted = tf.cast(outputs, tf.float64) / temperature
                return tf.reduce_max(tf.nn.softmax(shifted, axis=-1), axis=-1), outputs
            with tf.GradientTape() as tape:
                tape.watch(images)
                outputs = tf.cast(model(images, training=False), tf.float32)
                predicted = tf.argmax(outputs, axis=-1)
                # -log S_ŷ(x; T), summed: each image's gradient depends on that image only.
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    predicted, outputs / temperature))
            perturbed = images - epsilon * _sign(tape.gradient(loss, images)) / std
            shifted = tf.cast(model(perturbed, training=False), tf.float64) / temperature
            # float64: with T = 1000 the softmax values differ in their fifth digit.
            return tf.reduce_max(tf.nn.softmax(shifted, axis=-1), axis=-1), outputs

        return odin

    def score(self, model, images):
        return self._function(model, tf.convert_to_tensor(images, tf.float32))


# ---------------------------------------------------------------- Mahalanobis
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


def save_statistics(path, means, precision, covariance, counts, fingerprint):
    """Writes the statistics to an .npz file atomically (never half a file).

    Example:
      save_statistics("stats.npz", means, precision, covariance, counts, fingerprint)
    """
    with atomic_io.atomic_stream(path, "wb", suffix=".npz") as stream:
        np.savez(
            stream, format_version=np.int64(_STATS_FORMAT), means=means, precision=precision,
            covariance=covariance, counts=counts,
            fingerprint=np.str_(json.dumps(fingerprint, sort_keys=True)),
        )


def load_statistics(path, fingerprint=None):
    """The saved statistics dict, or None when missing, unreadable or made for another
    fingerprint (another model file or training set: stale).

    Example:
      stats = load_statistics("stats.npz", fingerprint=model_fingerprint(path))
    """
    try:
        with np.load(path, allow_pickle=False) as stored:
            values = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError):
        return None
    required = {"format_version", "means", "precision", "fingerprint"}
    if not required <= set(values) or int(values["format_version"]) != _STATS_FORMAT:
        return None
    if json.loads(str(values["fingerprint"])) != json.loads(json.dumps(fingerprint, sort_keys=True)):
        return None
    return values


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


# ------------------------------------------------------------------- registry
_POST_HOC = {"odin": ODIN, "mahalanobis": Mahalanobis}


def names():
    """Every detector name: the output scores and the post-hoc detectors.

    Example:
      names()  # ['energy', 'ice', 'mahalanobis', 'max_logit', 'msp', 'odin']
    """
    return sorted([*scores_lib.names(), *_POST_HOC])


def get(name, **options):
    """The detector called `name` (a `Detector` is returned as is).

    Options go to the post-hoc detectors (e.g. `get("odin", temperature=1000,
    epsilon=0.0014, std=...)`); output scores take none.

    Example:
      get("odin", temperature=100.0)
    """
    if isinstance(name, Detector):
        return name
    if name in _POST_HOC:
        return _POST_HOC[name](**options)
    if isinstance(name, str) and name in scores_lib.names():
        if options:
            raise ValueError(f"score {name!r} takes no options; got {sorted(options)}.")
        return OutputScore(name)
    raise ValueError(f"Unknown detector {name!r}; valid detectors: {', '.join(names())}.")


def default_stats_path(model_path):
    """`<run>/mahalanobis_stats.npz` for a run's model.keras, `<name>_mahalanobis_stats.npz`
    beside any other .keras file.

    Example:
      default_stats_path("runs/ice/model.keras")  # 'runs/ice/mahalanobis_stats.npz'
    """
    model_path = os.path.abspath(model_path)
    directory, base = os.path.split(model_path)
    if base == run_folder.MODEL_FILE:
        return os.path.join(directory, STATS_FILE)
    return os.path.join(directory, f"{os.path.splitext(base)[0]}_{STATS_FILE}")


def for_run(name, config, model_path, *, odin_temperature=1000.0, odin_epsilon=0.0014,
            mahalanobis_epsilon=0.0, stats_path=None, refit=False):
    """A detector for a trained run: std from the run's in-distribution normalisation and
    Mahalanobis statistics cached beside the model file (`STATS_FILE`), tied to the
    model file's hash and to the training images used (dataset, limit, seed).

    Example:
      detector = for_run("mahalanobis", config, "runs/ice/model.keras")
    """
    from ice_tf import data  # imported here: data loading is heavy for users of the scores only.

    if name not in names():
        raise ValueError(f"Unknown detector {name!r}; valid detectors: {', '.join(names())}.")
    std = data.normalization(config.in_dataset)[1]
    if name == "odin":
        return ODIN(temperature=odin_temperature, epsilon=odin_epsilon, std=std)
    if name == "mahalanobis":
        fingerprint = {
            "model": model_fingerprint(model_path),
            "train": {"dataset": config.in_dataset, "split": "train", "limit": config.limit_train,
                      "seed": config.seed if config.limit_train else None},
        }
        return Mahalanobis(epsilon=mahalanobis_epsilon, std=std, fingerprint=fingerprint,
                           refit=refit, stats_path=stats_path or default_stats_path(model_path))
    return OutputScore(name)


__all__ = [
    "Detector", "OutputScore", "ODIN", "Mahalanobis", "names", "get", "for_run",
    "default_stats_path", "class_statistics", "tied_precision",
    "model_fingerprint", "save_statistics", "load_statistics", "STATS_FILE",
]
