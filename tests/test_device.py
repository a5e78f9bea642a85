"""Checks that need the accelerator: run by scripts/device_check.sh (on a GPU, or on
this CPU with --cpu), skipped in the plain test suite.

  ICE_TF_DEVICE_CHECK=gpu python -m pytest tests/test_device.py   # what the script runs
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import zipped_dataset

from ice_tf import distribute, layers, models, precision

MODE = os.environ.get("ICE_TF_DEVICE_CHECK")
pytestmark = pytest.mark.skipif(not MODE, reason="run by scripts/device_check.sh")
SHAPE = (16, 16, 3)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, *SHAPE)).astype("float32")
    y = rng.integers(0, 10, 32)
    outliers = rng.normal(0, 2, size=(64, *SHAPE)).astype("float32")
    return zipped_dataset(x, y, outliers, 16, 32)


def _train(policy="float32", strategy=None, jit_compile=False, initial=None):
    """Two ICE steps of a small CNN from `initial`; (loss, weights, model)."""
    strategy = strategy or tf.distribute.get_strategy()
    with precision.policy(policy):
        model = models.build_model("small_cnn", SHAPE, 10, head="gaussian", strategy=strategy)
        with strategy.scope():
            if initial is not None:
                model.set_weights(initial)
            model.compile(keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), loss="ice",
                          weight_decay=5e-4, jit_compile=jit_compile)
        history = model.fit(_data(), epochs=1, verbose=0)
    return history.history["loss"][-1], model.get_weights(), model


def _initial():
    keras.utils.set_random_seed(0)
    return models.build_model("small_cnn", SHAPE, 10, head="gaussian").get_weights()


def _max_relative(a, b):
    return max(float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)) for x, y in zip(a, b))


def _update_difference(start, a, b):
    """|update a - update b| / |update b| over all weights together."""
    flat = lambda weights: np.concatenate([(w - s).ravel() for w, s in zip(weights, start)])  # noqa: E731
    return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


def test_the_accelerator_is_there():
    if MODE == "gpu":
        assert tf.config.list_physical_devices("GPU"), "no GPU visible to TensorFlow"
        assert precision.resolve("auto") == "mixed_float16"
        _, _, model = _train()
        assert "GPU" in model.backbone.trainable_variables[0].device.upper()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_steps_are_finite_and_near_float32(policy):
    initial = _initial()
    loss32, weights32, _ = _train("float32", initial=initial)
    loss16, weights16, model = _train(policy, initial=initial)
    assert np.isfinite(loss16) and all(np.all(np.isfinite(w)) for w in weights16)
    assert loss16 == pytest.approx(loss32, rel=0.05)
    # Two steps in half precision move the weights as float32 does, to a few percent.
    assert _update_difference(initial, weights16, weights32) < 0.1
    # The Gaussian head (Eq. 0.11) computes in float32, even on features far from its means.
    assert isinstance(model.head, layers.GaussianLayer) and model.head.compute_dtype == "float32"
    far = model.head(tf.constant(np.full((2, model.head.means.shape[1]), 300.0), tf.float32))
    assert far.dtype == tf.float32 and np.all(np.isfinite(far.numpy()))


def test_mirrored_strategy_over_the_visible_devices_equals_one_device():
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or None
    mirrored = tf.distribute.MirroredStrategy(devices)
    initial = _initial()
    loss_one, weights_one, _ = _train(initial=initial)
    loss_all, weights_all, _ = _train(strategy=mirrored, initial=initial)
    assert loss_all == pytest.approx(loss_one, rel=1e-3)
    assert _max_relative(weights_all, weights_one) < 1e-3
    gpus = len(devices or [])
    assert distribute.get_strategy("auto").num_replicas_in_sync == (gpus if gpus > 1 else 1)


def test_xla_on_and_off_take_the_same_steps():
    initial = _initial()
    loss_off, weights_off, _ = _train(initial=initial)
    loss_on, weights_on, model = _train(jit_compile=True, initial=initial)
    assert model.jit_compile
    assert loss_on == pytest.approx(loss_off, rel=1e-3)
    assert _max_relative(weights_on, weights_off) < 1e-3
