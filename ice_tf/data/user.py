"""A user's own data: arrays or `tf.data` datasets, batched for `OODModel`.

  with_outliers(in_data, outliers)   ((x, y), x_outliers) batches at any ratio; the
                                     outliers repeat and reshuffle, so an epoch is never cut
  batched(in_data)                   (x, y) batches
  images_only(data)                  a dataset of images, from images or (images, labels)

`in_data` is `(x, y)` arrays or a dataset of `(x, y)`, unbatched or batched; labels
may be integers or one-hot. Images are passed on as float32, unchanged: normalise
them as the model expects.

Example:
    train = ice_tf.data.with_outliers((x_train, y_train), x_outliers, batch_size=128, ratio=2)
    model.fit(train, epochs=10)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _is_image_batch(spec):
    return spec.shape.rank is not None and spec.shape.rank >= 4


def _labelled(in_data, what="in_data"):
    """An unbatched dataset of (float32 image, int64 label)."""
    if isinstance(in_data, tf.data.Dataset):
        spec = in_data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(f"{what} must be a dataset of (images, labels); its elements are {spec}.")
        dataset = in_data.unbatch() if _is_image_batch(spec[0]) else in_data
    else:
        if not (isinstance(in_data, (tuple, list)) and len(in_data) == 2):
            raise ValueError(f"{what} must be (images, labels) arrays or a dataset of them.")
        images, labels = np.asarray(in_data[0]), np.asarray(in_data[1])
        if len(images) != len(labels):
            raise ValueError(f"{what}: {len(images)} images but {len(labels)} labels.")
        if len(images) == 0:
            raise ValueError(f"{what} holds no images.")
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))

    def convert(image, label):
        if label.shape.rank == 1 and label.shape[0] and label.shape[0] > 1:
            label = tf.argmax(label, axis=-1)  # one-hot
        return tf.cast(image, tf.float32), tf.cast(tf.reshape(label, []), tf.int64)

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def images_only(data, what="outliers"):
    """An unbatched dataset of float32 images from an array, a dataset of images or a
    dataset of (images, labels).

    Example:
      images_only(tf.data.Dataset.from_tensor_slices((x_svhn, y_svhn))).batch(256)
    """
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if isinstance(spec, tuple):
            data, spec = data.map(lambda images, *rest: images), spec[0]
        dataset = data.unbatch() if _is_image_batch(spec) else data
    else:
        images = np.asarray(data)
        if images.ndim < 2 or len(images) == 0:
            raise ValueError(f"{what} must be a non-empty array of images (n, H, W, C); got {images.shape}.")
        dataset = tf.data.Dataset.from_tensor_slices(images)
    return dataset.map(lambda image: tf.cast(image, tf.float32))


def batched(in_data, batch_size=128, seed=0, shuffle=True):
    """(x, y) batches of a user's data, reshuffled on every pass when `shuffle`.

    Example:
      model.fit(batched((x_train, y_train), batch_size=128), epochs=10)  # loss="ce"
    """
    dataset = _labelled(in_data)
    if shuffle:
        dataset = dataset.shuffle(8192, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def with_outliers(in_data, outliers, batch_size=128, ratio=2, seed=0, shuffle=True):
    """((x, y), x_outliers) batches: `batch_size` in-distribution images with
    `ratio * batch_size` outliers each (the paper's 128 + 256).

    An epoch is one pass over `in_data`; the outliers repeat and reshuffle as often as
    needed, so a short outlier set never cuts an epoch.

    Example:
      model.fit(with_outliers((x, y), x_out, batch_size=64, ratio=2), epochs=5)
    """
    if batch_size < 1 or not ratio > 0:
        raise ValueError(f"batch_size must be >= 1 and ratio > 0; got {batch_size} and {ratio}.")
    in_batches = batched(in_data, batch_size, seed=seed, shuffle=shuffle)
    outlier_images = images_only(outliers)
    if shuffle:
        outlier_images = outlier_images.shuffle(8192, seed=seed + 1, reshuffle_each_iteration=True)
    outlier_batches = outlier_images.repeat().batch(max(1, int(round(ratio * batch_size))),
                                                    drop_remainder=True)
    return tf.data.Dataset.zip((in_batches, outlier_batches)).prefetch(tf.data.AUTOTUNE)


def image_shape_of(in_data):
    """(H, W, C) of the images of `in_data` ((x, y) arrays or a dataset).

    Example:
      image_shape_of((np.zeros((8, 32, 32, 3)), np.zeros(8)))  # (32, 32, 3)
    """
    spec = _labelled(in_data).element_spec[0]
    return tuple(spec.shape)


def num_classes_of(in_data):
    """1 + the largest label of `in_data` (one pass over a dataset).

    Example:
      num_classes_of((x_train, y_train))  # 10 for CIFAR-10 labels
    """
    largest = -1
    for _, labels in batched(in_data, 4096, shuffle=False):
        largest = max(largest, int(tf.reduce_max(labels)))
    return largest + 1


__all__ = ["with_outliers", "batched", "images_only", "image_shape_of", "num_classes_of"]
