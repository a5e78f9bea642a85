"""Shared fixtures. TensorFlow's C++ logging is silenced before TensorFlow starts."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


def tiny_backbone(input_shape=(6, 6, 1), width=8, name="tiny"):
    """A fast conv backbone with BatchNorm, for training-loop tests."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name=name)


def blob_data(num_in=96, num_out=192, num_classes=3, shape=(6, 6, 1), seed=0):
    """In-distribution images: one bright quadrant per class plus noise; outliers: noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_in)
    images = rng.normal(0.0, 0.3, (num_in, *shape)).astype("float32")
    height, width = shape[0] // 2, shape[1] // 2
    for k in range(num_classes):
        row, col = divmod(k, 2)
        images[labels == k, row * height:(row + 1) * height, col * width:(col + 1) * width] += 2.0
    outliers = rng.normal(0.0, 1.5, (num_out, *shape)).astype("float32")
    return images, labels.astype("int64"), outliers


def zipped_dataset(images, labels, outliers, batch_in=16, batch_out=32):
    in_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_in, drop_remainder=True)
    out_ds = tf.data.Dataset.from_tensor_slices(outliers).batch(batch_out, drop_remainder=True)
    return tf.data.Dataset.zip((in_ds, out_ds))


@pytest.fixture(autouse=True)
def _seed_and_reset_policy():
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")
