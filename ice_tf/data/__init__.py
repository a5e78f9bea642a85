"""Datasets for OOD detection: in-distribution sets, auxiliary outliers and OOD test sets.

Every dataset has a registry name (`names()`), a `DatasetInfo` (`get_info`) and comes from
one of four kinds of source:

- **tfds**: `cifar10`, `cifar100`, `svhn`, `textures` (DTD, all 5,640 images), `places365`,
  `lsun` and `lsun/<scene>`, `imagenet32`, `mnist`, `fashion_mnist`. With `download=False`
  (the default) a dataset that is not prepared fails at once, saying how to prepare it.
- **files** (pass `path`): `image_folder` (iSUN, LSUN-C, LSUN-R ...), `npy` (300K Random
  Images), `tiny_images` (80M Tiny Images `.bin`, with OE's CIFAR exclusion list).
- **synthetic**: `gaussian`, `rademacher`, `blobs` (Outlier Exposure's noise sets).
- **a user's own labelled set** as the in-distribution set: `image_folder:PATH` (one
  subfolder per class), `npz:PATH`, or arrays registered with `register_labelled(name, ...)`
  (`ice_tf.data.labelled`); `describe(name)` gives its classes and normalisation.
- **a user's own arrays or datasets**: `with_outliers((x, y), x_outliers)` and `batched((x, y))`
  make `OODModel` batches of them (`ice_tf.data.user`).
- **embedded** (ships with the package, runs offline): `embedded_fashion_mnist`, the near-OOD
  configuration `embedded_fashion_mnist_near` / `embedded_fashion_mnist_heldout`,
  `embedded_outliers`, `embedded_mnist`, `embedded_digits`, `embedded_textures`.

Example:
    >>> from ice_tf import data
    >>> train, steps = data.make_train_dataset(
    ...     "embedded_fashion_mnist", "embedded_outliers", image_shape=(28, 28, 1))
    >>> test = data.make_eval_dataset(
    ...     "embedded_mnist", image_shape=(28, 28, 1),
    ...     normalization=data.normalization("embedded_fashion_mnist"))
"""

from ice_tf.data.embedded import EMBEDDED_DIR_ENV
from ice_tf.data.pipeline import (
    augment,
    count,
    load,
    make_eval_dataset,
    make_train_dataset,
    prepare,
)
from ice_tf.data.registry import (DatasetInfo, describe, get_info, names, normalization,
                                  register_labelled)
from ice_tf.data.user import batched, image_shape_of, images_only, num_classes_of, with_outliers

__all__ = [
    "DatasetInfo",
    "EMBEDDED_DIR_ENV",
    "augment",
    "batched",
    "count",
    "describe",
    "get_info",
    "image_shape_of",
    "images_only",
    "load",
    "make_eval_dataset",
    "make_train_dataset",
    "names",
    "normalization",
    "num_classes_of",
    "prepare",
    "register_labelled",
    "with_outliers",
]
