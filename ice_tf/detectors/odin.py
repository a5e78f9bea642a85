"""ODIN (Liang et al., ICLR 2018): temperature scaling and input perturbation.

Example:
  odin = ODIN(temperature=1000.0, epsilon=0.0014, std=0.353)
"""

from __future__ import annotations

import tensorflow as tf


from ice_tf.detectors.base import Detector, _PerModelFunction, _sign, _std_tensor


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
