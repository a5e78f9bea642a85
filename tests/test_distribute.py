"""MirroredStrategy over two logical CPUs gives the same update as one device.

Logical devices must be configured before TensorFlow starts, so each comparison
runs in its own process.

Kernel sensitivity (BUILD.md, "Tests and CPU kernels"): with oneDNN on, TensorFlow
picks convolution kernels by CPU and batch size, and the half-size per-replica
batches take other kernels than the one-device batch: on the first conv layer the
two-step update then differs by 2.5e-4 (relative) on AVX2, AVX-512 and AMX CPUs
alike, while the forward loss agrees to 1e-7. The tight comparison therefore runs
with `TF_ENABLE_ONEDNN_OPTS=0`, i.e. Eigen's kernels, which are the same code on
every x86-64 CPU the wheel runs on; there the update agrees to 3e-6. A second
comparison with oneDNN on checks the kernels users train with, at a bound set
between that kernel noise and the smallest real bug. Two injected bugs show the
comparison can fail: without the 1/replicas loss scaling the update differs by
1.0 (it doubles), and with unsynchronised BatchNorm by 0.26 or more.
"""

import json
import os
import functools
import subprocess
import sys
import textwrap

import pytest

from ice_tf import distribute

_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from ice_tf import backbones, distribute, models

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
    scale_for_replicas, get_backbone = models.distribute.scale_for_replicas, backbones.get
    results = {}
    mirrored_strategy = distribute.get_strategy("mirrored")  # one: their collectives' keys clash
    for bug in sys.argv[1].split(","):
        # Bugs injected on purpose, to show that the comparison detects them.
        models.distribute.scale_for_replicas, backbones.get = scale_for_replicas, get_backbone
        if bug == "no_replica_scaling":
            models.distribute.scale_for_replicas = lambda loss: loss
        elif bug == "unsynchronized_batchnorm":
            backbones.get = lambda *args, **kwargs: get_backbone(
                *args, **{**kwargs, "sync_batchnorm": False})
        mirrored, mirrored_loss = train(mirrored_strategy)
        weight_diff = max(np.linalg.norm(m - s) / max(np.linalg.norm(s), 1e-12)
                          for m, s in zip(mirrored, single))
        update_diff = max(np.linalg.norm((m - i) - (s - i)) / max(np.linalg.norm(s - i), 1e-12)
                          for m, s, i in zip(mirrored, single, initial)
                          if np.linalg.norm(s - i) > 0)
        results[bug] = {
            "replicas": mirrored_strategy.num_replicas_in_sync,
            "weight_diff": float(weight_diff), "update_diff": float(update_diff),
            "loss_diff": abs(mirrored_loss - single_loss) / abs(single_loss),
        }
    print(json.dumps(results))
    """
)

# One process compares the correct setup and each injected bug with one device.
_EIGEN_VARIANTS = ("none", "no_replica_scaling", "unsynchronized_batchnorm")


@functools.lru_cache(maxsize=None)
def _compare_all(onednn, bugs):
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0",
    }
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ",".join(bugs)], capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert all(result["replicas"] == 2 for result in results.values())
    return results


def _compare(onednn, bug="none"):
    return _compare_all(onednn, _EIGEN_VARIANTS if not onednn else ("none",))[bug]


def test_two_replicas_match_one_device():
    # Eigen kernels (oneDNN off): the same arithmetic on every x86-64 CPU.
    result = _compare(onednn=False)
    assert result["weight_diff"] <= 1e-5, result
    # The updates themselves agree: a missing 1/replicas scaling would double them.
    assert result["update_diff"] <= 1e-4, result
    assert result["loss_diff"] <= 1e-5, result


def test_two_replicas_match_one_device_with_onednn_kernels():
    # oneDNN's per-batch-size kernels differ by up to 2.5e-4 in the update (measured on
    # AVX2, AVX-512 and AMX CPUs); the smallest injected bug differs by 0.26.
    result = _compare(onednn=True)
    assert result["weight_diff"] <= 1e-3, result
    assert result["update_diff"] <= 1e-2, result
    assert result["loss_diff"] <= 1e-5, result


@pytest.mark.parametrize("bug", ["no_replica_scaling", "unsynchronized_batchnorm"])
def test_the_comparison_detects_replica_bugs(bug):
    result = _compare(onednn=False, bug=bug)
    assert result["update_diff"] >= 0.1, result


def test_strategy_names():
    assert distribute.get_strategy("default").num_replicas_in_sync == 1
    assert distribute.get_strategy("auto").num_replicas_in_sync == 1  # no GPUs here
    with pytest.raises(ValueError, match="auto, default, mirrored"):
        distribute.get_strategy("tpu")


def test_multi_worker_needs_a_cluster(monkeypatch):
    for name in ("TF_CONFIG", "SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="needs a cluster: set TF_CONFIG"):
        distribute.cluster_resolver()


def test_batches_must_divide_by_the_replicas():
    class FourReplicas:
        num_replicas_in_sync = 4

    distribute.check_batches(FourReplicas(), batch_in=128, batch_out=256)
    with pytest.raises(ValueError, match="batch_out=250 does not divide by the 4 replicas"):
        distribute.check_batches(FourReplicas(), batch_in=128, batch_out=250)
    assert distribute.is_chief(distribute.get_strategy("default"))
    assert not distribute.is_multi_worker(distribute.get_strategy("default"))
