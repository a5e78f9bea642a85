"""Loading, resizing, augmenting and batching: the datasets that training and evaluation use.

- `load` gives raw `(image uint8 (H, W, C), label int64)` pairs of one split.
- `prepare` turns images of any size and channel count into float32 [0, 1] at a target shape
  (resize so the image covers the target, keeping its aspect ratio, then centre-crop), as
  OE/Energy do for Textures, Places365 and LSUN (`Resize(32)` + `CenterCrop(32)`).
- `make_train_dataset` gives infinite, reshuffled, augmented, normalised batches, zipped with an
  outlier stream for Outlier-Exposure-style training, plus the epoch length.
- `make_eval_dataset` gives normalised batches in a fixed order.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ice_tf.data import registry
from ice_tf.data.images import prepare  # noqa: F401  (part of this module's API)
from ice_tf.data.sources import AUTOTUNE, LoadOptions

# Zero padding of the random-crop augmentation (OE/Energy: RandomCrop(32, padding=4)).
CROP_PADDING = 4


def _options(name, split, *, data_dir, path, download, limit, seed, exclude_index_path,
             image_shape):
    entry = registry.source_entry(name)
    registry.check_split(name, split)
    path = path or None
    exclude_index_path = exclude_index_path or None
    if path is not None and not entry.uses_path:
        raise ValueError(f"Dataset {name!r} does not read a path; got path={path!r}.")
    if exclude_index_path is not None and not entry.uses_exclusions:
        raise ValueError(
            f"Dataset {name!r} does not take exclude_index_path (only 'tiny_images' does)."
        )
    if limit is not None and int(limit) < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}.")
    return entry, LoadOptions(
        data_dir=data_dir or None,
        path=path,
        download=bool(download),
        limit=None if limit is None else int(limit),
        seed=int(seed),
        exclude_index_path=exclude_index_path,
        image_shape=None if image_shape is None else tuple(int(d) for d in image_shape),
    )


def _open(name, split, **kwargs):
    entry, options = _options(name, split, **kwargs)
    return entry.source.open(split, options, dataset_name=name)


def load(name, split, *, data_dir=None, path=None, download=False, limit=None, seed=0,
         exclude_index_path=None, image_shape=None):
    """One split of a registered dataset as `(image uint8 (H, W, C), label int64)` pairs.

    Raw images at their native size (not resized); label -1 for unlabelled / OOD-only sets.
    The order is fixed: file order, or with `limit` a seeded subsample.

    Args:
      name: a registered name (`names()`).
      split: one of `get_info(name).splits`.
      data_dir: TFDS data folder (default: `$TFDS_DATA_DIR` or ~/tensorflow_datasets).
      path: the file or folder of a "files" dataset (image_folder, npy, tiny_images).
      download: let TFDS download and prepare a missing dataset. Off by default: a missing
        dataset then raises FileNotFoundError at once, saying how to prepare it.
      limit: at most this many examples, a subsample chosen by `seed` (uniform for file and
        embedded sets; for TFDS: files in a seeded order, then a 50,000-image shuffle buffer).
        For synthetic sets, the number of images generated (default 2,000).
      seed: chooses the subsample, and the synthetic images.
      exclude_index_path: tiny_images only: OE's `80mn_cifar_idxs.txt` (1-based indices).
      image_shape: synthetic sets only: the (H, W, C) they are generated at (default 32x32x3).

    Example:
      >>> ds = load("cifar10", "test", data_dir="/data/tfds")
      >>> image, label = next(iter(ds))      # uint8 (32, 32, 3), int64
    """
    examples = _open(name, split, data_dir=data_dir, path=path, download=download, limit=limit,
                     seed=seed, exclude_index_path=exclude_index_path, image_shape=image_shape)
    # A known length lets progress bars show how far an evaluation is.
    return examples.fixed.apply(tf.data.experimental.assert_cardinality(examples.num_examples))


def count(name, split, *, data_dir=None, path=None, download=False, limit=None, seed=0,
          exclude_index_path=None):
    """The number of examples `load` yields with the same arguments.

    Example: `count("textures", "test")` is 5,640 with the real DTD data.
    """
    return _open(name, split, data_dir=data_dir, path=path, download=download, limit=limit,
                 seed=seed, exclude_index_path=exclude_index_path,
                 image_shape=None).num_examples


# ---------------------------------------------------------------------- normalise/augment
def _normalization_tensors(normalization, channels):
    if isinstance(normalization, str):
        normalization = registry.normalization(normalization)
    mean, std = (np.asarray(values, dtype=np.float32).reshape(-1) for values in normalization)
    for values, what in ((mean, "mean"), (std, "std")):
        if values.size not in (1, channels):
            raise ValueError(
                f"normalization {what} has {values.size} values; images have {channels} "
                "channels (give 1 value or one per channel)."
            )
    if np.any(std <= 0):
        raise ValueError(f"normalization std must be positive, got {std}.")
    return tf.constant(mean), tf.constant(std)


def augment(image, seed, *, flip=True, padding=CROP_PADDING):
    """Random crop after zero padding, then a random horizontal flip, of one image.

    `image` is float (H, W, C) in pixel space (so padding is black); `seed` is a shape-(2,)
    integer tensor: the same seed gives the same crop and flip.

    Example: `augment(image, tf.constant([0, 7]))`.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    height, width, channels = image.shape
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, (height, width, channels), seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def _derived_seed(seed, stream):
    """Distinct, reproducible seeds for the shuffles and augmentations of each stream."""
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0]) & 0x7FFFFFFF


def _training_stream(examples, *, image_shape, mean, std, seed, stream, augment_images, flip,
                     start=0):
    shuffle_seed = _derived_seed(seed, 2 * stream)
    augment_seed = tf.constant(_derived_seed(seed, 2 * stream + 1), tf.int64)

    def to_input(index, example):
        image, label = example
        image = prepare(image, image_shape)
        if augment_images:
            image = augment(image, tf.stack([augment_seed, index]), flip=flip)
        return (image - mean) / std, label

    # enumerate after repeat: every pass gets fresh (but reproducible) augmentations, and a
    # stream started at `start` continues both the order and the augmentations.
    return examples.stream(shuffle_seed, start).enumerate(start=start).map(
        to_input, num_parallel_calls=AUTOTUNE)


def _image_only(image, label):
    del label  # outliers are unlabelled
    return image


def make_train_dataset(in_name, outlier_name=None, *, image_shape, batch_in=128, batch_out=256,
                       seed=0, augment=True, data_dir=None, outlier_path=None,
                       outlier_exclude_index_path=None, download=False, in_split="train",
                       limit=None, outlier_split="train", outlier_limit=None, start_step=0):
    """Training batches and the number of steps in one epoch.

    Yields `((x, y), x_out)` when `outlier_name` is given, else `(x, y)`: x and x_out float32
    (batch, *image_shape), normalised with the in-distribution set's mean/std; y int64.
    Both streams are infinite and reshuffled on every pass, so `model.fit(ds, epochs=E,
    steps_per_epoch=steps)` keeps one iterator across epochs and the outlier stream never runs
    out. `steps = number of in-distribution examples // batch_in` (the reference code's epoch
    length); both streams drop incomplete batches. Augmentation (when `augment`), for
    in-distribution images and outliers alike: random crop with zero padding 4 and a random
    horizontal flip (no flip where `get_info(name).flip` is False).

    Args:
      in_name: a labelled registered set; `normalization(in_name)` must exist.
      outlier_name: optional auxiliary-outlier set (e.g. "tiny_images", "embedded_outliers").
      image_shape: (H, W, C) every image is prepared to (see `prepare`).
      seed: fixes shuffles, augmentations and subsamples: the same seed, the same batches.
      data_dir, download: TFDS options (see `load`), for both streams.
      outlier_path, outlier_exclude_index_path: `path` / `exclude_index_path` of the outliers.
      in_split, outlier_split: the splits read.
      limit, outlier_limit: seeded subsample sizes (see `load`).
      start_step: batches already trained on: the dataset starts with batch `start_step` of
        the full stream, so that a resumed run sees what an uninterrupted one would.

    Example:
      >>> ds, steps = make_train_dataset("cifar10", "tiny_images", image_shape=(32, 32, 3),
      ...                                outlier_path="tiny_images.bin")
      >>> model.fit(ds, epochs=100, steps_per_epoch=steps)
    """
    info = registry.get_info(in_name)
    if info.num_classes is None:
        raise ValueError(f"{in_name!r} has no class labels: it cannot be the in-distribution set.")
    if batch_in < 1 or batch_out < 1:
        raise ValueError(f"Batch sizes must be positive, got {batch_in} and {batch_out}.")
    image_shape = tuple(int(d) for d in image_shape)
    mean, std = _normalization_tensors(registry.normalization(in_name), image_shape[-1])
    common = dict(image_shape=image_shape, mean=mean, std=std, seed=seed,
                  augment_images=augment)

    in_examples = _open(in_name, in_split, data_dir=data_dir, path=None, download=download,
                        limit=limit, seed=seed, exclude_index_path=None, image_shape=image_shape)
    steps_per_epoch = in_examples.num_examples // batch_in
    if steps_per_epoch < 1:
        raise ValueError(
            f"{in_name!r} split {in_split!r} has {in_examples.num_examples} examples, fewer "
            f"than one batch of {batch_in}."
        )
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    in_batches = _training_stream(in_examples, stream=0, flip=info.flip,
                                  start=start_step * batch_in, **common).batch(
        batch_in, drop_remainder=True)
    if outlier_name is None:
        return in_batches.prefetch(AUTOTUNE), steps_per_epoch

    out_info = registry.get_info(outlier_name)
    out_examples = _open(outlier_name, outlier_split, data_dir=data_dir, path=outlier_path,
                         download=download, limit=outlier_limit, seed=seed,
                         exclude_index_path=outlier_exclude_index_path, image_shape=image_shape)
    if out_examples.num_examples == 0:
        raise ValueError(f"The outlier set {outlier_name!r} is empty.")
    out_batches = (_training_stream(out_examples, stream=1, flip=out_info.flip,
                                    start=start_step * batch_out, **common)
                   .map(_image_only)
                   .batch(batch_out, drop_remainder=True))
    return tf.data.Dataset.zip((in_batches, out_batches)).prefetch(AUTOTUNE), steps_per_epoch


def make_eval_dataset(name, split="test", *, image_shape, normalization, batch_size=256,
                      limit=None, seed=0, data_dir=None, path=None, download=False,
                      exclude_index_path=None):
    """Evaluation batches `(x float32 normalised, y int64)` in a fixed order.

    Every image is prepared to `image_shape` (see `prepare`) and normalised with
    `normalization`: a `(mean, std)` pair in [0, 1] pixel units or the name of the
    in-distribution set whose constants to use. The last batch may be smaller.

    Example:
      >>> ds = make_eval_dataset("textures", image_shape=(32, 32, 3),
      ...                        normalization="cifar10")
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    image_shape = tuple(int(d) for d in image_shape)
    mean, std = _normalization_tensors(normalization, image_shape[-1])
    dataset = load(name, split, data_dir=data_dir, path=path, download=download, limit=limit,
                   seed=seed, exclude_index_path=exclude_index_path, image_shape=image_shape)

    def to_input(image, label):
        return (prepare(image, image_shape) - mean) / std, label

    return dataset.map(to_input, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
