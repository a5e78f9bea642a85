"""Helpers shared by the test modules: tiny models and data, fake embedded-benchmark files.

Imported as `from helpers import ...` (tests/ is on the path); the fixtures that use
them live in conftest.py.
"""

import importlib.util
import pathlib

import keras
import numpy as np
import tensorflow as tf

from ice_tf import data


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


# ------------------------------------------------ embedded benchmark, tiny fake files
def two_point_pixels(rng, shape, mean, std):
    """uint8 pixels in {0, v} whose mean and std are about `mean` and `std` (in [0, 1] units)."""
    value = (std**2 + mean**2) / mean
    probability = mean / value
    return np.where(rng.random(shape) < probability, round(value * 255), 0).astype(np.uint8)


def write_fake_embedded(folder, sizes=(200, 40, 100), num_outliers=(300, 50), seed=0):
    """Tiny files with the embedded schema. Fashion images hold their class at pixel [0, 0]
    (times 10), outlier and OOD images their row index at pixels [0, 0] and [0, 1]."""
    rng = np.random.default_rng(seed)
    (mean,), (std,) = data.normalization("embedded_fashion_mnist")
    fashion = {}
    for split, size in zip(("train", "val", "test"), sizes):
        labels = (np.arange(size) % 10).astype(np.uint8)
        images = two_point_pixels(rng, (size, 28, 28), mean, std)
        images[:, 0, 0] = labels * 10
        fashion[f"{split}_images"], fashion[f"{split}_labels"] = images, labels

    def indexed(count):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1] = np.arange(count) // 256, np.arange(count) % 256
        return images

    np.savez(folder / "fashion_mnist.npz", **fashion)
    np.savez(folder / "outliers.npz", train=indexed(num_outliers[0]), val=indexed(num_outliers[1]))
    np.savez(folder / "ood_test.npz", mnist=indexed(60), digits=indexed(30), textures=indexed(40))
    return fashion


def row_index(images):
    """The row index written by `write_fake_embedded` into uint8 images (n, 28, 28, 1)."""
    return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0].astype(int)


_SCRIPT_FLAGS = set()  # the absl flags that scripts loaded by load_script defined


def load_script(relative_path):
    """A file of the repository's scripts/ imported as a module, e.g. "study_table.py".

    Scripts define absl flags when imported, and two of them may share a name (--seeds),
    which absl refuses within one process. So the flags that earlier loaded scripts
    defined are dropped before this one defines its own: the tests call the scripts'
    functions in-process, never a main that reads an earlier script's flags.
    """
    from absl import flags

    for name in _SCRIPT_FLAGS & set(flags.FLAGS):
        delattr(flags.FLAGS, name)
    before = set(flags.FLAGS)
    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _SCRIPT_FLAGS.update(set(flags.FLAGS) - before)
    return module
