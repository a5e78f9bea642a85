"""`FusedBatchNormalization` (the backbones' BatchNorm) against a float64 numpy reference
and against Keras' own BatchNormalization: outputs, moving averages and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import precision
from ice_tf.layers import FusedBatchNormalization


def _reference(x, gamma, beta, moving_mean, moving_variance, momentum, epsilon):
    """float64: training-mode batch normalisation over (N, H, W) and Keras' update of the
    moving averages with the biased batch variance."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 1, 2))
    variance = x.var(axis=(0, 1, 2))
    y = (x - mean) / np.sqrt(variance + epsilon) * gamma + beta
    return (y, moving_mean * momentum + mean * (1 - momentum),
            moving_variance * momentum + variance * (1 - momentum))


def _layers(channels, seed=0):
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels),
               rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)]
    built = []
    for cls in (FusedBatchNormalization, keras.layers.BatchNormalization):
        layer = cls(momentum=0.9, epsilon=1e-5)
        layer.build((None, 5, 5, channels))
        layer.set_weights([w.astype("float32") for w in weights])
        built.append(layer)
    return built, weights


def test_training_pass_equals_the_float64_reference_and_keras():
    (fused, plain), (gamma, beta, mean0, var0) = _layers(4)
    x = np.random.default_rng(1).normal(2.0, 3.0, (6, 5, 5, 4)).astype("float32")
    y_ref, mean_ref, var_ref = _reference(x, gamma, beta, mean0, var0, 0.9, 1e-5)
    y_fused = fused(x, training=True).numpy()
    y_plain = plain(x, training=True).numpy()
    np.testing.assert_allclose(y_fused, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-4, atol=1e-4)
    for layer in (fused, plain):
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var_ref, rtol=1e-5, atol=1e-5)
    # Inference is Keras' own code: the same outputs from the same moving averages.
    np.testing.assert_allclose(fused(x, training=False).numpy(), plain(x, training=False).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_gradients_equal_keras_batchnormalization():
    (fused, plain), _ = _layers(3, seed=2)
    x = tf.constant(np.random.default_rng(3).normal(size=(4, 5, 5, 3)).astype("float32"))
    weights = tf.constant(np.random.default_rng(4).normal(size=(4, 5, 5, 3)).astype("float32"))
    gradients = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x, training=True)) * weights)
        gradients.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for fused_gradient, plain_gradient in zip(*gradients):
        np.testing.assert_allclose(fused_gradient.numpy(), plain_gradient.numpy(),
                                   rtol=1e-3, atol=1e-4)
        assert np.all(np.isfinite(fused_gradient.numpy()))


def test_constant_channel_and_single_value_stay_finite():
    (fused, _), _ = _layers(2, seed=5)
    x = np.zeros((1, 1, 1, 2), "float32")  # one value per channel: variance 0
    y = fused(x, training=True).numpy()
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(fused.moving_variance.numpy()))


def test_bfloat16_inputs_give_the_reference_within_bfloat16_rounding():
    with precision.policy("mixed_bfloat16"):
        layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
        x = np.random.default_rng(6).normal(1.0, 2.0, (8, 4, 4, 3)).astype("float32")
        y = layer(tf.cast(x, tf.bfloat16), training=True)
    assert y.dtype == tf.bfloat16
    rounded = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
    y_ref, _, var_ref = _reference(rounded, 1.0, 0.0, 0.0, 1.0, 0.9, 1e-5)
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), y_ref, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(layer.moving_variance.numpy(), var_ref, rtol=1e-4)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 3)])
def test_other_ranks_use_keras_code(shape):
    layer = FusedBatchNormalization()
    x = np.random.default_rng(7).normal(size=shape).astype("float32")
    y = layer(x, training=True).numpy()
    axes = tuple(range(len(shape) - 1))
    expected = (x - x.mean(axes)) / np.sqrt(x.var(axes) + layer.epsilon)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_saved_and_loaded_with_its_weights(tmp_path):
    inputs = keras.Input((5, 5, 2))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(inputs))
    model.get_layer("bn").moving_mean.assign([1.0, 2.0])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization)
    np.testing.assert_array_equal(loaded.get_layer("bn").moving_mean.numpy(), [1.0, 2.0])
