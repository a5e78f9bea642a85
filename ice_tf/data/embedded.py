"""The embedded benchmark: small real-image sets shipped in `ice_tf/data/embedded/`.

It runs offline on a CPU in minutes. Files (all images uint8, 28x28, white on black):

| file                | arrays                                                        |
|---------------------|---------------------------------------------------------------|
| `fashion_mnist.npz` | `{train,val,test}_images` and `_labels`: 13,000 / 1,000 / 3,000 |
| `outliers.npz`      | `train` (>= 20,000 photo crops), `val` (2,000 crops of other photos) |
| `ood_test.npz`      | `mnist` (5,000), `digits` (1,797), `textures` (2,000)         |

The near-OOD configuration trains on six Fashion-MNIST classes and holds out the other four:
in-distribution T-shirt/top 0, Trouser 1, Pullover 2, Dress 3, Sandal 5, Bag 8 (relabelled
0..5 in that order); near-OOD test set Coat 4, Shirt 6, Sneaker 7, Ankle boot 9 (test split).

Set the environment variable `ICE_TF_EMBEDDED_DIR` to read the files from another folder.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ice_tf.data.sources import from_arrays, subsample_indices

EMBEDDED_DIR_ENV = "ICE_TF_EMBEDDED_DIR"
NEAR_OOD_IN_CLASSES = (0, 1, 2, 3, 5, 8)
NEAR_OOD_HELDOUT_CLASSES = (4, 6, 7, 9)


def embedded_dir():
    """The folder holding the embedded `.npz` files (`$ICE_TF_EMBEDDED_DIR` if set).

    Example:
      embedded_dir() / "fashion_mnist.npz"
    """
    override = os.environ.get(EMBEDDED_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "embedded"


@functools.lru_cache(maxsize=8)
def _read_npz(path, modified_ns):
    # The modification time is part of the cache key so that a rewritten file is re-read.
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def read_arrays(file_name):
    """All arrays of one embedded `.npz` file, as a dict (cached; read-only).

    Example:
      read_arrays("fashion_mnist.npz")["train_images"].shape  # (13000, 28, 28)
    """
    path = embedded_dir() / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"Embedded benchmark file {str(path)!r} is missing. It ships with the package in "
            f"ice_tf/data/embedded/; set {EMBEDDED_DIR_ENV} to read it from another folder."
        )
    return _read_npz(str(path), path.stat().st_mtime_ns)


class EmbeddedSource:
    """One embedded set: for each split, the image array and the label array (or None).

    `keep_classes` restricts a labelled set to those classes; with `relabel` they become
    0..len-1 in the given order, otherwise every label becomes -1 (an OOD set).

    Example: `EmbeddedSource("ood_test.npz", {"test": ("mnist", None)})`.
    """

    def __init__(self, file_name, splits, *, keep_classes=None, relabel=False):
        self.file_name = file_name
        self.splits = dict(splits)
        self.keep_classes = keep_classes
        self.relabel = relabel

    def open(self, split, options, *, dataset_name):
        """`Examples` of one split (the source protocol of `ice_tf.data.load`)."""
        arrays = read_arrays(self.file_name)
        image_key, label_key = self.splits[split]
        for key in (image_key, label_key):
            if key is not None and key not in arrays:
                raise ValueError(
                    f"Embedded file {self.file_name!r} has no array {key!r} (dataset "
                    f"{dataset_name!r}); it holds {sorted(arrays)}."
                )
        images = arrays[image_key]
        labels = None if label_key is None else arrays[label_key].astype(np.int64)
        indices = np.arange(len(images), dtype=np.int64)
        if self.keep_classes is not None:
            indices = np.flatnonzero(np.isin(labels, self.keep_classes)).astype(np.int64)
            if self.relabel:
                size = max(int(labels.max()), max(self.keep_classes)) + 1
                new_labels = np.full(size, -1, dtype=np.int64)
                new_labels[list(self.keep_classes)] = np.arange(len(self.keep_classes))
                labels = new_labels[labels]
            else:
                labels = None
        indices = indices[subsample_indices(len(indices), options.limit, options.seed)]
        return from_arrays(images, labels, indices=indices)
