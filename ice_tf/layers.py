"""Classification heads: the class-conditional Gaussian layer of ICE and a linear head.

The Gaussian layer replaces the final linear layer f(z) = Wz + b (Eq. 0.1) by the
negative squared Mahalanobis distance to trainable class means (Eq. 0.11):

    h_i(z) = -(z - m_i)^T (L L^T)^{-1} (z - m_i),

with one lower-triangular L (positive diagonal) shared by all classes, i.e. a
tied-covariance Gaussian, as in Gaussian discriminant analysis and Mahalanobis.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ice_tf import gda

# softplus(x) + _DIAG_SHIFT is the diagonal of L; the shift keeps L invertible.
_DIAG_SHIFT = 1e-5


def _inverse_softplus(y):
    """x with softplus(x) = y, for y > 0 (numerically stable for large y)."""
    y = np.asarray(y, dtype=np.float64)
    return y + np.log(-np.expm1(-y))


@keras.saving.register_keras_serializable(package="ice_tf")
class GaussianLayer(keras.layers.Layer):
    """Class-conditional Gaussian head, h_i(z) of Eq. (0.11).

    Weights:
      means:      (K, d) class means m_i.
      scale_raw:  (d, d) free matrix; its strictly-lower part N gives the shape of L.
      diag_raw:   (d,) with s = softplus(diag_raw) + 1e-5 > 0.

    L = (I + N) diag(s): lower triangular with diagonal s > 0. Off-diagonal entries are
    stored relative to their column's scale, so their gradients do not grow as the
    feature scale shrinks: with L's free entries stored directly, an SGD step of the
    size that suits the diagonal of small-scale features (~0.03 after a GDA fit) made
    L nearly singular at once and training diverged.

    h is computed without forming an inverse, with two triangular solves:
    A = L^{-1} Z^T and C = L^{-1} M^T, then h = -(|a|^2 - 2 a.c + |c|^2), clamped
    to <= 0 (it is a negated quadratic form; the clamp removes rounding above 0).
    Cost O((B + K) d^2 + B K d) instead of the O(B K d^2) of solving every
    difference z - m_i.

    The layer always computes in float32: TensorFlow has no float16/bfloat16
    kernel for `MatrixTriangularSolve`, and the squared distances overflow
    float16. Under a `mixed_float16` policy it casts its input and returns float32.

    Example:
      head = GaussianLayer(10)
      h = head(features)                 # (batch, 10), h <= 0
      confidence = ops.exp(ops.max(h, axis=-1))   # in (0, 1]

    Args:
      num_classes: K.
      means_initializer: initializer of the means (default: normal, std 1).
      **kwargs: passed to `keras.layers.Layer`; `dtype` defaults to "float32".
    """

    def __init__(self, num_classes, means_initializer="random_normal", confidence_temperature=1.0,
                 confidence_platt=None, **kwargs):
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        self.num_classes = int(num_classes)
        self.scale_factor = 1.0  # set by initialize_from_features(calibrate_scale=True)
        # T of the served confidence exp(max h / T) (ice_tf.calibration.fit_temperature);
        # 1 is the paper's exp(max h). Saved with the model; scores and AUROC ignore it.
        self.confidence_temperature = float(confidence_temperature)
        # (a, b) of the served confidence σ(a · max h + b) (ice_tf.calibration.fit_platt),
        # used instead of the temperature when set.
        self.confidence_platt = (None if confidence_platt is None
                                 else tuple(float(v) for v in confidence_platt))
        self.means_initializer = keras.initializers.get(means_initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError("GaussianLayer needs a known feature size (last input dimension).")
        self.feature_dim = int(dim)
        self.means = self.add_weight(
            name="means",
            shape=(self.num_classes, self.feature_dim),
            initializer=self.means_initializer,
            dtype="float32",
        )
        # L = I at initialisation.
        self.scale_raw = self.add_weight(
            name="scale_raw",
            shape=(self.feature_dim, self.feature_dim),
            initializer="zeros",
            dtype="float32",
        )
        self.diag_raw = self.add_weight(
            name="diag_raw",
            shape=(self.feature_dim,),
            initializer=keras.initializers.Constant(float(_inverse_softplus(1.0 - _DIAG_SHIFT))),
            dtype="float32",
        )
        self.input_spec = keras.layers.InputSpec(axes={-1: self.feature_dim})

    @property
    def scale_tril(self):
        """L = (I + N) diag(s) (d, d): lower triangular with a positive diagonal s."""
        raw = tf.convert_to_tensor(self.scale_raw)
        strictly_lower = tf.linalg.band_part(raw, -1, 0) - tf.linalg.band_part(raw, 0, 0)
        diagonal = tf.nn.softplus(tf.convert_to_tensor(self.diag_raw)) + _DIAG_SHIFT
        return (strictly_lower + tf.eye(self.feature_dim)) * diagonal[None, :]

    def call(self, inputs):
        z = tf.cast(inputs, tf.float32)
        scale = self.scale_tril
        means = tf.convert_to_tensor(self.means)
        # (d, B) and (d, K): whitened features and means.
        a = tf.linalg.triangular_solve(scale, tf.transpose(z), lower=True)
        c = tf.linalg.triangular_solve(scale, tf.transpose(means), lower=True)
        a_sq = tf.reduce_sum(tf.square(a), axis=0)[:, None]
        c_sq = tf.reduce_sum(tf.square(c), axis=0)[None, :]
        squared_distance = a_sq - 2.0 * tf.matmul(a, c, transpose_a=True) + c_sq
        return -tf.nn.relu(squared_distance)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def initialize_from_features(self, features, labels, ridge=1e-2, calibrate_scale=False,
                                 min_scale=None, means_only=False):
        """Sets means and L to the Gaussian discriminant analysis estimate.

        m_i is the mean of the features of class i and L the Cholesky factor of the
        tied (pooled within-class) covariance, the same statistics as the
        Mahalanobis detector. Used when a pretrained linear head is replaced by
        this layer (the fine-tune schedule).

        With `calibrate_scale`, L is then multiplied by the scalar c that minimises the
        cross-entropy of softmax(h) (Eqs. 0.11-0.12) on these features: h scales as
        1/c^2, so this is a temperature fit. The GDA fit alone makes h about -d for
        a sample's own class and far lower for the others; CE on logits that large has
        steep gradients, and fine-tuning from it diverged.

        Args:
          features: (n, d) array of penultimate features.
          labels: (n,) integer labels in [0, K); every class must occur.
          ridge: added to the covariance's diagonal, relative to the mean variance.
          calibrate_scale: also fit the scalar scale of L by cross-entropy.
          min_scale: a lower bound on that scale. On separable features the CE-optimal
            scale tends to 0 (h infinitely sharp) and training from it diverges; 1.0
            lets the fit only soften the GDA estimate.
          means_only: set the means m_i to the class means and leave L as it is
            (`head_init=class_means`).

        Returns:
          self.
        """
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels).reshape(-1)
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}.")
        if features.ndim != 2:
            raise ValueError(f"features must have shape (n, d), got {features.shape}.")
        if features.shape[0] != labels.shape[0]:
            raise ValueError(
                f"features and labels differ in length: {features.shape[0]} vs {labels.shape[0]}."
            )
        if not np.all(np.isfinite(features)):
            raise ValueError("features contain NaN or inf values.")
        if not self.built:
            self.build((None, features.shape[1]))
        elif features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features have {features.shape[1]} dimensions but this GaussianLayer was built "
                f"for {self.feature_dim}."
            )
        labels = _validate_labels(labels, self.num_classes)
        means, covariance, counts = gda.fit(features, labels, self.num_classes)
        if gda.missing_classes(counts):
            raise ValueError(
                f"every class needs at least one sample; missing classes: {gda.missing_classes(counts)}."
            )
        if means_only:
            self.means.assign(means.astype(np.float32))
            return self
        # Ridge: `ridge` times the mean variance on the diagonal. Directions where the
        # features barely vary (dead ReLU units, d > n) would otherwise get a near-zero
        # scale, and training would blow up the first time a feature moves along them.
        mean_variance = max(float(np.trace(covariance)) / self.feature_dim, 1e-12)
        scale = np.linalg.cholesky(covariance + ridge * mean_variance * np.eye(self.feature_dim))
        self.scale_factor = 1.0
        if calibrate_scale:
            self.scale_factor = cross_entropy_scale(features, labels, means, scale)
            if min_scale is not None:
                self.scale_factor = max(self.scale_factor, float(min_scale))
            scale = scale * self.scale_factor
        diagonal = np.maximum(np.diag(scale), 2 * _DIAG_SHIFT)
        self.means.assign(means.astype(np.float32))
        self.scale_raw.assign((np.tril(scale, -1) / diagonal[None, :]).astype(np.float32))
        self.diag_raw.assign(_inverse_softplus(diagonal - _DIAG_SHIFT).astype(np.float32))
        return self

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            means_initializer=keras.initializers.serialize(self.means_initializer),
            confidence_temperature=self.confidence_temperature,
            confidence_platt=None if self.confidence_platt is None else list(self.confidence_platt),
        )
        return config


def cross_entropy_scale(features, labels, means, scale_tril):
    """The c > 0 minimising mean CE(softmax(h / c^2), y), h = -(z - m)^T (L L^T)^-1 (z - m).

    Float64 numpy. CE(t) with t = 1/c^2 is convex (a log-sum-exp of terms linear in
    t plus a linear term), so a bounded scalar search over log t finds its minimum.

    Example:
      scale = cross_entropy_scale(features, labels, means, scale_tril)
    """
    from scipy import linalg, optimize

    whitened = linalg.solve_triangular(scale_tril, features.T, lower=True)
    whitened_means = linalg.solve_triangular(scale_tril, means.T, lower=True)
    distances = (np.sum(whitened**2, axis=0)[:, None] - 2.0 * whitened.T @ whitened_means
                 + np.sum(whitened_means**2, axis=0)[None, :])
    distances = np.maximum(distances, 0.0)
    own = distances[np.arange(len(labels)), labels]

    def cross_entropy(log_t):
        t = np.exp(log_t)
        logits = -t * distances
        peak = logits.max(axis=1)
        log_normaliser = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        return float(np.mean(log_normaliser + t * own))

    result = optimize.minimize_scalar(cross_entropy, bounds=(np.log(1e-6), np.log(1e2)), method="bounded")
    return float(np.exp(-0.5 * result.x))


def _validate_labels(labels, num_classes):
    labels = np.asarray(labels)
    if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise ValueError("labels must be integers.")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values from {labels.min()} to "
            f"{labels.max()}. Check the dataset's number of classes."
        )
    return labels


@keras.saving.register_keras_serializable(package="ice_tf")
class VirtualOutlierHead(keras.layers.Dense):
    """The linear head f(z) = Wz + b (Eq. 0.1) with VOS's uncertainty weights (Du et al.,
    ICLR 2022): per-class energy weights w (the weighted energy log Σ_k relu(w_k) e^{f_k})
    and a logistic regression on that energy (two logits, a·E + c), trained with the
    network by `ice_tf.losses.VirtualOutlierLoss`. It is a Dense layer, so everything that
    takes a linear head takes it; the extra weights are saved with it.

    Example:
      head = make_head("vos", num_classes=10)
    """

    def build(self, input_shape):
        super().build(input_shape)
        # The reference's torch.nn.init.uniform_ of the energy weights; Linear(1, 2) for
        # the logistic regression (PyTorch's default: U(-1, 1) for one input).
        self.energy_weights = self.add_weight(
            name="energy_weights", shape=(self.units,),
            initializer=keras.initializers.RandomUniform(0.0, 1.0), dtype="float32")
        self.uncertainty_kernel = self.add_weight(
            name="uncertainty_kernel", shape=(1, 2),
            initializer=keras.initializers.RandomUniform(-1.0, 1.0), dtype="float32")
        self.uncertainty_bias = self.add_weight(
            name="uncertainty_bias", shape=(2,),
            initializer=keras.initializers.RandomUniform(-1.0, 1.0), dtype="float32")

    # Dense saves its kernel and bias alone; the base Layer saves every variable.
    def save_own_variables(self, store):
        """Saves every variable, the uncertainty weights too (Keras calls it)."""
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        """Loads what `save_own_variables` saved (Keras calls it)."""
        keras.layers.Layer.load_own_variables(self, store)

    def weighted_energy(self, outputs):
        """log Σ_k relu(w_k) exp(f_k) per row, computed stably (the reference's log_sum_exp).

        Example:
          head.weighted_energy(head(features))  # (batch,)
        """
        outputs = keras.ops.cast(outputs, "float32")
        top = keras.ops.max(outputs, axis=-1, keepdims=True)
        weighted = keras.ops.relu(self.energy_weights) * keras.ops.exp(outputs - top)
        # + 1e-30: a row whose weights are all 0 stays finite.
        return keras.ops.squeeze(top, -1) + keras.ops.log(keras.ops.sum(weighted, axis=-1) + 1e-30)

    def uncertainty_logits(self, energy):
        """The logistic regression's two logits for a weighted energy (batch,) -> (batch, 2).

        Example:
          head.uncertainty_logits(head.weighted_energy(outputs))
        """
        return keras.ops.expand_dims(energy, -1) * self.uncertainty_kernel + self.uncertainty_bias


HEADS = ("linear", "gaussian", "vos")


@keras.saving.register_keras_serializable(package="ice_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization whose training-mode pass is TensorFlow's one fused kernel.

    Keras 3 normalises with separate ops (moments as mean, squared difference and tiles
    in the gradient; casts of bfloat16 inputs to float32 and back), which took the largest
    share of a CPU training step after the convolutions. In training mode, for 4-D
    channels-last inputs, this layer runs `FusedBatchNormV3` instead (statistics in
    float32 whatever the input type; one kernel forward, one backward) and updates the
    moving averages as Keras does, with the biased batch variance (the kernel returns
    the Bessel-corrected one; it is scaled back by (n - 1) / n). Everything else
    (inference, other ranks or axes, masks, renorm, synchronized replicas) is Keras'
    own code. Same weights, same config, same saved files as `BatchNormalization`.

    Example:
      bn = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
      y = bn(x, training=True)  # x: (batch, H, W, C)
    """

    def _fusable(self, inputs, training, mask):
        return (bool(training) and self.trainable and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4
                and self.axis in (-1, 3, [3], [-1]))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = (tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32))
        offset = (tf.cast(self.beta, tf.float32) if self.center
                  else tf.zeros((channels,), tf.float32))
        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
        outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32), epsilon=self.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        variance = variance * tf.maximum(count - 1.0, 0.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="ice_tf")
class Dropout(keras.layers.Dropout):
    """Keras' Dropout with its mask drawn from 16 random bits per element, not a float.

    Keras draws one float32 uniform per activation (`stateless_dropout`); on a CPU that
    random generation was the largest cost of a WRN-40-2 training step after the
    convolutions and their gradients. This layer draws one 32-bit word per two
    activations and compares each 16-bit half with ``round(rate * 65536)``, which makes
    the drop probability ``rate`` rounded to a multiple of 1/65536 (within 8e-6 of it);
    kept activations are scaled by the exact keep probability, so the expected output
    equals the input. Masks are stateless and seeded by the layer's seed generator, as
    Keras' are. Inputs whose last axis is odd, and ``noise_shape``, go to Keras' own code.
    Same config and saved files as `keras.layers.Dropout`.

    Example:
      drop = Dropout(0.3, seed=1)
      y = drop(x, training=True)  # x: (batch, H, W, C), C even
    """

    RESOLUTION = 65536

    def _threshold(self):
        return int(round(self.rate * self.RESOLUTION))

    def call(self, inputs, training=False):
        channels = inputs.shape[-1]
        if (not training or self.rate <= 0 or self.noise_shape is not None
                or channels is None or channels % 2 or not 0 < self._threshold() < self.RESOLUTION):
            return super().call(inputs, training=training)
        seed = self.seed_generator.next()
        seed = tf.cast(tf.math.floormod(tf.cast(seed, tf.int64), tf.int32.max - 1), tf.int32)
        shape = tf.shape(inputs)
        words = tf.random.stateless_uniform(tf.concat([shape[:-1], [channels // 2]], 0), seed,
                                            minval=None, maxval=None, dtype=tf.uint32)
        halves = tf.reshape(tf.bitcast(words, tf.uint16), shape)
        threshold = self._threshold()
        keep = tf.cast(halves >= threshold, inputs.dtype)
        scale = tf.constant(self.RESOLUTION / (self.RESOLUTION - threshold), inputs.dtype)
        return inputs * keep * scale


def make_head(kind, num_classes, name="head"):
    """Builds a classification head by name.

    Args:
      kind: "linear" (f(z) = Wz + b, Eq. 0.1; bias initialised to 0 and kernel to
        PyTorch's nn.Linear default, as the reference WRN does), "gaussian"
        (`GaussianLayer`, Eq. 0.11) or "vos" (the linear head with VOS's uncertainty
        weights, `VirtualOutlierHead`). Both compute in float32 under mixed precision.
      num_classes: K.
      name: the layer name.

    Example:
      head = make_head("gaussian", num_classes=10)  # or "linear"
    """
    if kind == "linear":
        return keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
            ),
            bias_initializer="zeros",
            dtype="float32",
            name=name,
        )
    if kind == "gaussian":
        return GaussianLayer(num_classes, name=name)
    if kind == "vos":
        return VirtualOutlierHead(
            num_classes,
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform"),
            bias_initializer="zeros", dtype="float32", name=name)
    raise ValueError(f"Unknown head {kind!r}; valid heads: {', '.join(HEADS)}.")


def is_gaussian_head(layer):
    """Whether `layer` is a `GaussianLayer` (the heads that give h_i, Eq. 0.11).

    Example:
      is_gaussian_head(make_head("gaussian", 10))  # True
    """
    return isinstance(layer, GaussianLayer)


__all__ = ["GaussianLayer", "VirtualOutlierHead", "FusedBatchNormalization", "HEADS", "make_head", "is_gaussian_head", "cross_entropy_scale"]
