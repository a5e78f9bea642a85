"""What every dataset source returns, and the shared machinery for array-backed sets.

A source opens one split of one dataset and returns `Examples`:
- `fixed`: a `tf.data.Dataset` of `(image uint8 (H, W, C), label int64)` in a fixed order;
- `num_examples`: how many examples `fixed` yields (None where it cannot be known cheaply);
- `stream(seed, start)`: the same examples as an infinite dataset, reshuffled on every pass,
  from its `start`-th element (a resumed run continues the stream where it stopped).

Array-backed sets (`.npy` files, Tiny Images, the embedded benchmark, synthetic noise) read
rows by index, so training shuffles indices, never decoded images: a fresh permutation of the
indices for every pass costs a few bytes per example, whatever the image size.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

# Rows are read in batches so that a Python reader is called once per batch, not per image.
READ_BATCH = 256
# Arrays up to this size are embedded in the graph; larger ones are read through numpy.
_MAX_CONSTANT_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """Everything `load` passes to a source (see `ice_tf.data.load` for the meaning).

    Example:
      LoadOptions(path="/data/iSUN", limit=1000, seed=1)
    """

    data_dir: str | None = None
    path: str | None = None
    download: bool = False
    limit: int | None = None
    seed: int = 0
    exclude_index_path: str | None = None
    image_shape: tuple[int, int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Examples:
    """One opened split: a fixed-order dataset, its size and an infinite shuffled stream.

    Example:
      examples = from_arrays(images, labels)
      for image, label in examples.stream(seed=0).take(4): ...
    """

    fixed: tf.data.Dataset
    num_examples: int | None
    stream_fn: Callable[[int, int], tf.data.Dataset]

    def stream(self, seed, start=0):
        """Infinite `(image, label)` dataset, reshuffled on every pass, determined by `seed`,
        from its element `start` on: `stream(s, n)` is `stream(s).skip(n)`, and array-backed
        sets skip indices, not decoded images."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}.")
        return self.stream_fn(int(seed), int(start))


def subsample_indices(num_rows, limit, seed):
    """Sorted positions of a uniform, seeded subsample of `limit` out of `num_rows` rows.

    All rows (in order) when `limit` is None or at least `num_rows`. Example:
    `subsample_indices(10, 3, seed=0)` gives three sorted positions in [0, 10).
    """
    if limit is None or limit >= num_rows:
        return np.arange(num_rows, dtype=np.int64)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_rows, size=limit, replace=False)).astype(np.int64)


def row_gather(images, reader=None, image_shape=None):
    """A function `indices (n,) int64 -> images (n, H, W, C) uint8` for an array of images.

    `images` is an array (or `np.memmap`) of shape (N, H, W, C) or (N, H, W). `reader`, when
    given, replaces plain indexing and returns images of `image_shape` (Tiny Images uses it
    to reorder its bytes).

    Example:
      gather = row_gather(np.zeros((10, 8, 8, 1), np.uint8))
      gather(tf.constant([0, 3]))  # (2, 8, 8, 1)
    """
    shape = tuple(int(d) for d in (image_shape or images.shape[1:]))
    if len(shape) == 2:
        shape = (*shape, 1)
    small = not isinstance(images, np.memmap) and images.nbytes <= _MAX_CONSTANT_BYTES
    if reader is None and small:
        constant = tf.constant(np.asarray(images).reshape((-1, *shape)))
        return lambda indices: tf.gather(constant, indices)

    def read_rows(indices):
        # Sorted reads are far faster on a memory-mapped file; the original order is restored.
        order = np.argsort(indices, kind="stable")
        rows = np.empty((len(indices), *shape), dtype=np.uint8)
        picked = reader(indices[order]) if reader is not None else images[indices[order]]
        rows[order] = np.asarray(picked).reshape((-1, *shape))
        return rows

    def gather(indices):
        rows = tf.numpy_function(read_rows, [indices], tf.uint8, stateful=False)
        return tf.ensure_shape(rows, (None, *shape))

    return gather


def label_gather(labels):
    """`indices -> labels int64`; every label is -1 when `labels` is None.

    Example:
      label_gather(None)(tf.constant([0, 1]))  # [-1, -1]
    """
    if labels is None:
        return lambda indices: tf.fill(tf.shape(indices), tf.constant(-1, tf.int64))
    constant = tf.constant(np.asarray(labels).astype(np.int64))
    return lambda indices: tf.gather(constant, indices)


def rows_from_indices(index_dataset, gather_images, gather_labels):
    """Turns a dataset of scalar row indices into `(image, label)` pairs, reading in batches.

    Example:
      pairs = rows_from_indices(tf.data.Dataset.range(10), gather_images, gather_labels)
    """

    def read(indices):
        return gather_images(indices), gather_labels(indices)

    return index_dataset.batch(READ_BATCH).map(read, num_parallel_calls=AUTOTUNE).unbatch()


def permutation_stream(indices, seed, start=0):
    """Infinite dataset of the given indices: a new seeded permutation on every pass,
    from element `start` on (whole passes are skipped without being drawn).

    The same effect as `.shuffle(len(indices), reshuffle_each_iteration=True).repeat()`,
    with no shuffle buffer to fill at the start of each pass.

    Example:
      permutation_stream(np.arange(5), seed=0).take(10)  # two passes, each a permutation
    """
    count = len(indices)
    indices = tf.constant(np.asarray(indices, dtype=np.int64))
    seed = tf.constant(seed, tf.int64)

    def permute(epoch):
        return tf.random.experimental.stateless_shuffle(indices, seed=tf.stack([seed, epoch]))

    passes, within = divmod(int(start), max(count, 1))
    return tf.data.Dataset.counter(start=passes).map(permute).unbatch().skip(within)


def from_arrays(images, labels=None, *, indices=None, reader=None, image_shape=None):
    """`Examples` for an array of images (N, H, W[, C]) uint8 and optional labels (N,).

    `indices` selects (and orders) the rows used; all rows by default. `reader` and
    `image_shape`: see `row_gather`.

    >>> examples = from_arrays(np.zeros((10, 8, 8, 1), np.uint8), np.arange(10))
    >>> examples.num_examples
    10
    """
    if indices is None:
        indices = np.arange(len(images), dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    gather_images = row_gather(images, reader, image_shape)
    gather_labels = label_gather(labels)
    fixed = rows_from_indices(
        tf.data.Dataset.from_tensor_slices(indices), gather_images, gather_labels
    )

    def stream(seed, start):
        if len(indices) == 0:
            raise ValueError("Cannot stream an empty set of examples.")
        return rows_from_indices(permutation_stream(indices, seed, start), gather_images,
                                 gather_labels)

    return Examples(fixed=fixed, num_examples=int(len(indices)), stream_fn=stream)


def count_examples(dataset):
    """The number of elements of a finite dataset, from its cardinality or by iterating.

    Example:
      count_examples(tf.data.Dataset.range(7))  # 7
    """
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda total, _: total + 1))
