"""MirroredStrategy over two logical CPUs gives the same update as one device.

Logical devices must be configured before TensorFlow starts, so the comparison
runs in its own process.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ice_tf import distribute

_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from ice_tf import distribute, models

    rng = np.random.default_rng(0)
    images = rng.normal(size=(32, 16, 16, 1)).astype("float32")
    labels = rng.integers(0, 3, 32)
    outliers = rng.normal(0, 2, size=(64, 16, 16, 1)).astype("float32")

    def dataset():
        in_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
        out_ds = tf.data.Dataset.from_tensor_slices(outliers).batch(32)
        return tf.data.Dataset.zip((in_ds, out_ds))

    keras.utils.set_random_seed(0)
    initial = models.build_model("small_cnn", (16, 16, 1), 3, head="gaussian").get_weights()

    def train(strategy):
        model = models.build_model("small_cnn", (16, 16, 1), 3, head="gaussian", strategy=strategy)
        with strategy.scope():
            model.set_weights(initial)
            model.compile(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), loss="ice",
                          weight_decay=5e-4)
        history = model.fit(dataset(), epochs=1, verbose=0)  # two steps
        return model.get_weights(), history.history["loss"][-1]

    single, single_loss = train(tf.distribute.get_strategy())
    mirrored_strategy = distribute.get_strategy("mirrored")
    mirrored, mirrored_loss = train(mirrored_strategy)
    weight_diff = max(np.linalg.norm(m - s) / max(np.linalg.norm(s), 1e-12)
                      for m, s in zip(mirrored, single))
    update_diff = max(np.linalg.norm((m - i) - (s - i)) / max(np.linalg.norm(s - i), 1e-12)
                      for m, s, i in zip(mirrored, single, initial) if np.linalg.norm(s - i) > 0)
    print(json.dumps({
        "replicas": mirrored_strategy.num_replicas_in_sync,
        "weight_diff": float(weight_diff), "update_diff": float(update_diff),
        "loss_diff": abs(mirrored_loss - single_loss) / abs(single_loss),
    }))
    """
)


def test_two_replicas_match_one_device():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["weight_diff"] <= 1e-5, result
    # The updates themselves agree: a missing 1/replicas scaling would double them.
    assert result["update_diff"] <= 1e-4, result
    assert result["loss_diff"] <= 1e-5, result


def test_strategy_names():
    assert distribute.get_strategy("default").num_replicas_in_sync == 1
    assert distribute.get_strategy("auto").num_replicas_in_sync == 1  # no GPUs here
    with pytest.raises(ValueError, match="auto, default, mirrored"):
        distribute.get_strategy("tpu")
