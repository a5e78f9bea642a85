"""`ice_tf.layers.Dropout` (the backbones' dropout, a mask from 16 random bits per element)
against a float64 numpy reference of inverted dropout and against Keras' own Dropout."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import backbones, precision
from ice_tf.layers import Dropout


def _reference(x, y, rate):
    """float64: what inverted dropout at `rate` (rounded to 1/65536) must give: every output
    zero or the input scaled by 1 / keep probability."""
    keep_probability = 1.0 - round(rate * 65536) / 65536
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / keep_probability, rtol=1e-6)
    return kept, keep_probability


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_mask_rate_and_scale_equal_the_float64_reference(rate):
    x = np.random.default_rng(0).uniform(1.0, 2.0, (32, 16, 16, 32)).astype("float32")
    y = Dropout(rate, seed=3)(x, training=True).numpy()
    kept, keep_probability = _reference(x, y, rate)
    n = kept.size
    # The kept fraction is a binomial proportion: within 5 standard deviations.
    assert abs(kept.mean() - keep_probability) < 5 * np.sqrt(rate * (1 - rate) / n)
    # Unbiased: the mean output equals the mean input within the same sampling error.
    assert abs(y.astype(np.float64).mean() / x.astype(np.float64).mean() - 1) < 0.01
    # Masks are independent across channels and positions, not repeated in pairs.
    assert 0.3 < np.mean(kept[..., 0::2] == kept[..., 1::2]) < 1.0


def test_gradient_is_the_mask_times_the_scale():
    x = tf.constant(np.random.default_rng(1).normal(size=(8, 6, 6, 16)), tf.float32)
    layer = Dropout(0.3, seed=5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    gradient = tape.gradient(y, x).numpy()
    kept, keep_probability = _reference(x.numpy(), y.numpy(), 0.3)
    np.testing.assert_allclose(gradient, np.where(kept, 1.0 / keep_probability, 0.0), rtol=1e-6)
    assert np.all(np.isfinite(gradient))


def test_seeded_masks_repeat_and_successive_calls_differ():
    x = np.ones((4, 8, 8, 8), "float32")
    first = Dropout(0.3, seed=7)(x, training=True).numpy()
    again = Dropout(0.3, seed=7)(x, training=True).numpy()
    np.testing.assert_array_equal(first, again)
    layer = Dropout(0.3, seed=7)
    assert not np.array_equal(layer(x, training=True).numpy(), layer(x, training=True).numpy())


def test_inference_and_keras_fallbacks():
    x = np.random.default_rng(2).normal(size=(4, 5, 5, 3)).astype("float32")
    layer = Dropout(0.3, seed=1)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    # An odd last axis goes to Keras' own dropout: same seed, same output as keras.layers.Dropout.
    np.testing.assert_array_equal(layer(x, training=True).numpy(),
                                  keras.layers.Dropout(0.3, seed=1)(x, training=True).numpy())


def test_bfloat16_policy_keeps_the_compute_dtype():
    with precision.policy("mixed_bfloat16"):
        layer = Dropout(0.3, seed=1)
        y = layer(tf.ones((2, 4, 4, 8)), training=True)
    assert y.dtype == tf.bfloat16
    assert set(np.unique(y.numpy().astype(np.float32))) <= {0.0, float(np.float32(tf.constant(
        65536 / (65536 - round(0.3 * 65536)), tf.bfloat16).numpy().astype(np.float32)))}


def test_config_round_trip_and_the_backbone_uses_it():
    layer = Dropout(0.25, seed=2, name="drop")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is Dropout and clone.rate == 0.25
    model = backbones.get("wrn16_2", (32, 32, 3), dropout_rate=0.3)
    assert any(type(layer) is Dropout for layer in model.layers)
