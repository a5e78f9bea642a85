"""A user's own labelled in-distribution set: an image folder or a `.npz`, by path.

`in_dataset="image_folder:PATH"` (flags: `--in_dataset=image_folder:PATH`) reads a folder
laid out as `keras.utils.image_dataset_from_directory` reads it, one subfolder per class
(the class names are the subfolder names, sorted):

    PATH/cat/*.png, PATH/dog/*.jpg, ...                  one pool
    PATH/train/<class>/..., PATH/test/<class>/... [, PATH/val/<class>/...]

`in_dataset="npz:PATH"` reads arrays: `x_train, y_train, x_test, y_test[, x_val, y_val]`
(the `keras.datasets` names), `{train,val,test}_images` / `_labels`, or one pool `x, y`
(or `images, labels`); an optional `class_names` array names the classes. Images are
uint8 (N, H, W[, C]) or floats in [0, 1]; labels integers 0..K-1 or one-hot.

Splits the data does not have are carved by a fixed seed (`SPLIT_SEED`), so every run
and every seed sees the same test set: a missing test split takes `TEST_FRACTION` of the
pool, a missing validation split `VAL_FRACTION` of the training data. The image size is
the most common size among the training images (others are resized to cover it and
centre-cropped), the channels 1 when every image is gray, else 3; the per-channel mean
and std are computed from the training split. All of it is read once per process into
memory as uint8 and described by `describe(name)` (what run folders store as
dataset.json).

Example:
  >>> info = ice_tf.data.get_info("image_folder:/data/flowers")   # read and registered
  >>> info.num_classes, info.image_shape
  (5, (64, 64, 3))
  >>> ice_tf.data.describe("image_folder:/data/flowers")["class_names"]
  ['daisy', 'dandelion', 'roses', 'sunflowers', 'tulips']
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os

import numpy as np

from ice_tf.data import files
from ice_tf.data.sources import from_arrays, subsample_indices

KINDS = ("image_folder", "npz")
SPLIT_SEED = 0
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
SPLITS = ("train", "val", "test")


def is_spec(name):
    """Whether `name` is a path spec of a labelled set (`image_folder:PATH`, `npz:PATH`).

    Example:
      is_spec("npz:/data/mine.npz")  # True
    """
    kind, sep, path = str(name).partition(":")
    return bool(sep) and kind in KINDS and bool(path)


@dataclasses.dataclass(frozen=True)
class LabelledArrays:
    """A labelled set in memory: uint8 images and int64 labels per split, and what they are.

    Example:
      LabelledArrays.from_arrays({"train": (x, y), "test": (x_test, y_test)})
    """

    splits: dict
    class_names: tuple
    origin: dict  # split -> "given" or how it was carved
    flip: bool = True

    @property
    def image_shape(self):
        return tuple(int(d) for d in self.splits["train"][0].shape[1:])

    @property
    def num_classes(self):
        return len(self.class_names)

    @functools.cached_property
    def normalization(self):
        """(mean, std) per channel in [0, 1] pixel units, from the training split."""
        images = self.splits["train"][0]
        channels = images.shape[-1]
        pixels = images.reshape(-1, channels)
        total = np.zeros(channels)
        squares = np.zeros(channels)
        for start in range(0, len(pixels), 1 << 22):  # float64 sums in chunks
            chunk = pixels[start:start + (1 << 22)].astype(np.float64) / 255.0
            total += chunk.sum(0)
            squares += (chunk ** 2).sum(0)
        mean = total / len(pixels)
        std = np.sqrt(np.maximum(squares / len(pixels) - mean ** 2, 0.0))
        std = np.where(std > 1e-6, std, 1.0)  # a constant channel: leave its scale alone
        return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)

    def describe(self):
        """What run folders store as dataset.json: classes, shape, normalisation, splits."""
        mean, std = self.normalization
        return {
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "normalization": {"mean": list(mean), "std": list(std)},
            "splits": {split: {"count": int(len(images)), "origin": self.origin[split]}
                       for split, (images, _) in self.splits.items()},
            "split_seed": SPLIT_SEED,
        }

    @classmethod
    def from_arrays(cls, splits, class_names=None, what="data", flip=True):
        """Checks and completes user arrays: {split: (images, labels)} with at least "train";
        missing "test" and "val" splits are carved (see the module docstring)."""
        unknown = set(splits) - set(SPLITS)
        if unknown or "train" not in splits:
            raise ValueError(f"{what}: splits must be among {', '.join(SPLITS)} and include "
                             f"train; got {', '.join(sorted(splits))}.")
        arrays = {split: (_as_images(images, f"{what} {split}"), _as_labels(labels, f"{what} {split}"))
                  for split, (images, labels) in splits.items()}
        for split, (images, labels) in arrays.items():
            if len(images) != len(labels):
                raise ValueError(f"{what} {split}: {len(images)} images but {len(labels)} labels.")
            if len(images) == 0:
                raise ValueError(f"{what} {split} holds no images.")
        shapes = {images.shape[1:] for images, _ in arrays.values()}
        if len(shapes) > 1:
            raise ValueError(f"{what}: the splits' images differ in shape ({sorted(shapes)}); "
                             "give one image size.")
        largest = max(int(labels.max()) for _, labels in arrays.values())
        if min(int(labels.min()) for _, labels in arrays.values()) < 0:
            raise ValueError(f"{what}: labels must be 0..K-1; found a negative label.")
        declared = class_names is not None
        class_names = tuple(str(n) for n in class_names) if declared else tuple(
            str(i) for i in range(largest + 1))
        if largest >= len(class_names):
            raise ValueError(f"{what}: label {largest} but only {len(class_names)} class names.")
        _check_classes(arrays, len(class_names), declared, what)
        origin = {split: "given" for split in arrays}
        rng = np.random.default_rng(SPLIT_SEED)
        for split, fraction, pool in (("test", TEST_FRACTION, "train"), ("val", VAL_FRACTION, "train")):
            if split in arrays:
                continue
            images, labels = arrays[pool]
            order = rng.permutation(len(images))
            count = max(1, int(round(fraction * len(images))))
            if len(images) - count < 1:
                raise ValueError(f"{what}: too few training images ({len(images)}) to carve a "
                                 f"{split} split; give more images or a {split} split.")
            taken, kept = np.sort(order[:count]), np.sort(order[count:])
            arrays[split] = images[taken], labels[taken]
            arrays[pool] = images[kept], labels[kept]
            origin[split] = f"{fraction:.0%} of the {pool} images, seed {SPLIT_SEED}"
            origin[pool] = f"given, less the carved {split} split" if origin[pool] == "given" \
                else f"{origin[pool]} and {split} splits"
        for images, labels in arrays.values():
            images.setflags(write=False)
            labels.setflags(write=False)
        return cls({s: arrays[s] for s in SPLITS}, class_names, origin, flip)


# A class with fewer training images than this share of the median class is taken for
# stray labels when the classes are not declared (class_names): a long-tailed set at
# 100:1 stays well above it.
STRAY_CLASS_SHARE = 0.01


def _check_classes(arrays, num_classes, declared, what):
    """Refuses labels that would silently make another classifier: fewer than 2 classes,
    a class missing from the training split (or seen only in test or val), and, when
    the classes are counted from the labels, a class so rare it looks like stray labels."""
    counts = np.bincount(arrays["train"][1], minlength=num_classes)
    if num_classes < 2:
        raise ValueError(f"{what}: the labels name one class only; a classifier needs at "
                         "least 2.")
    absent = [k for k in range(num_classes) if counts[k] == 0]
    for split in ("test", "val"):
        only_there = sorted(set(np.unique(arrays[split][1]).tolist()) & set(absent)) if split in arrays else []
        if only_there:
            raise ValueError(f"{what}: class{'es' if len(only_there) > 1 else ''} {only_there} "
                             f"appear{'' if len(only_there) > 1 else 's'} in the {split} split but "
                             "not in train; give training images of every class.")
    if absent:
        raise ValueError(f"{what}: no training image has label{'s' if len(absent) > 1 else ''} "
                         f"{absent}; labels must be 0..K-1 with every class in train (or give "
                         "class_names to declare K).")
    median = float(np.median(counts))
    rare = [k for k in range(num_classes) if counts[k] < STRAY_CLASS_SHARE * median]
    if rare and not declared:
        raise ValueError(f"{what}: label{'s' if len(rare) > 1 else ''} {rare} "
                         f"{'have' if len(rare) > 1 else 'has'} {int(counts[rare[0]])} training "
                         f"image(s) against a median of {int(median)} per class: stray labels? "
                         "Fix them, or give class_names to declare the classes.")


def _as_images(images, what):
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{what}: images must be (N, H, W) or (N, H, W, 1 or 3); got "
                         f"{images.shape}.")
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    if np.issubdtype(images.dtype, np.floating):
        if images.size and (np.nanmin(images) < 0 or np.nanmax(images) > 1 or np.isnan(images).any()):
            raise ValueError(f"{what}: float images must lie in [0, 1] (or give uint8 pixels).")
        return np.round(images * 255).astype(np.uint8)
    raise ValueError(f"{what}: images must be uint8 or floats in [0, 1]; got {images.dtype}.")


def _as_labels(labels, what):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(1)  # one-hot
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"{what}: labels must be integers 0..K-1 (or one-hot); got {labels.dtype}.")
    return labels.astype(np.int64)


# ------------------------------------------------------------------------------ folders
def _class_folders(folder):
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.is_dir() and not entry.name.startswith("."))


def _decode_all(paths):
    import tensorflow as tf

    images = []
    for path in paths:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False).numpy()
        if image.shape[-1] == 4:
            image = image[..., :3]
        elif image.shape[-1] == 2:
            image = image[..., :1]
        images.append(image)
    return images


def _to_common_shape(images, shape):
    from ice_tf.data.images import prepare

    out = np.empty((len(images), *shape), np.uint8)
    for index, image in enumerate(images):
        if image.shape == shape:
            out[index] = image
        else:
            out[index] = np.round(prepare(image, shape).numpy() * 255).astype(np.uint8)
    return out


def read_folder(folder):
    """`LabelledArrays` of a labelled image folder (layouts: see the module docstring).

    Example:
      read_folder("/data/flowers").class_names  # ('daisy', 'dandelion', ...)
    """
    what = f"image folder {folder!r}"
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} does not exist (in_dataset=image_folder:PATH needs a "
                                "folder with one subfolder per class).")
    top = _class_folders(folder)
    split_folders = {s: os.path.join(folder, s) for s in SPLITS if s in top}
    if "train" in split_folders:
        extra = sorted(set(top) - set(SPLITS))
        if extra:
            raise ValueError(f"{what} has train/ and also {', '.join(extra)}: put every class "
                             "under train/ (and test/, val/), or use one subfolder per class.")
    else:
        split_folders = {"train": folder}
    class_names = _class_folders(split_folders["train"])
    if not class_names:
        raise ValueError(f"{what} has no class subfolders: put each class's images in its own "
                         "subfolder (PATH/<class>/image.png).")
    listed = {}
    for split, split_folder in split_folders.items():
        names = _class_folders(split_folder)
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise ValueError(f"{what}: {split}/ has classes that train/ lacks: {', '.join(unknown)}.")
        paths, labels = [], []
        for label, name in enumerate(class_names):
            if name not in names:
                continue
            found = files.list_images(os.path.join(split_folder, name))
            paths += found
            labels += [label] * len(found)
        if not paths:
            raise ValueError(f"{what}: no images ({', '.join(files.IMAGE_EXTENSIONS)}) in its "
                             f"{split} class folders.")
        problems = files.check_image_files(paths)
        if problems:
            raise ValueError(f"{what}: {files.problems_message(problems)}")
        listed[split] = (paths, np.asarray(labels, np.int64))
    decoded = {split: _decode_all(paths) for split, (paths, _) in listed.items()}
    channels = 1 if all(i.shape[-1] == 1 for images in decoded.values() for i in images) else 3
    sizes = collections.Counter(image.shape[:2] for image in decoded["train"])
    height, width = sizes.most_common(1)[0][0]
    shape = (int(height), int(width), channels)
    splits = {split: (_to_common_shape(decoded[split], shape), labels)
              for split, (_, labels) in listed.items()}
    return LabelledArrays.from_arrays(splits, class_names, what)


# --------------------------------------------------------------------------------- npz
_NPZ_LAYOUTS = (
    {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")},
    {s: (f"{s}_images", f"{s}_labels") for s in SPLITS},
    {"train": ("x", "y")},
    {"train": ("images", "labels")},
)


def read_npz(path):
    """`LabelledArrays` of a `.npz` of images and labels (key names: see the module docstring).

    Example:
      read_npz("mine.npz").image_shape  # (32, 32, 3)
    """
    what = f"npz file {path!r}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} does not exist.")
    with files.npz_archive(path, what) as archive:
        keys = set(archive.files)
        for layout in _NPZ_LAYOUTS:
            if set(layout["train"]) <= keys:
                splits = {split: (archive[x], archive[y]) for split, (x, y) in layout.items()
                          if {x, y} <= keys}
                class_names = archive["class_names"].tolist() if "class_names" in keys else None
                return LabelledArrays.from_arrays(splits, class_names, what)
    raise ValueError(f"{what} holds {', '.join(sorted(keys))}; give x_train, y_train, x_test, "
                     "y_test (optionally x_val, y_val), or x, y, with class_names optional.")


@functools.lru_cache(maxsize=8)
def _read(kind, path, modified_ns):
    del modified_ns  # part of the cache key: a rewritten file is read again
    return read_folder(path) if kind == "image_folder" else read_npz(path)


def read_spec(name):
    """`LabelledArrays` of a spec `image_folder:PATH` or `npz:PATH` (cached per process).

    Example:
      read_spec("npz:mine.npz").num_classes  # 10
    """
    kind, _, path = name.partition(":")
    path = os.path.expanduser(path)
    modified = os.stat(path).st_mtime_ns if os.path.exists(path) else 0
    return _read(kind, os.path.abspath(path), modified)


class ArraysSource:
    """The registry source of a `LabelledArrays`: each split from memory, labels kept.

    Example: `ArraysSource(read_spec("npz:mine.npz"))`.
    """

    def __init__(self, arrays):
        self.arrays = arrays

    def open(self, split, options, *, dataset_name):
        """`Examples` of one split, labels kept (the source protocol of `ice_tf.data.load`)."""
        images, labels = self.arrays.splits[split]
        indices = subsample_indices(len(images), options.limit, options.seed)
        return from_arrays(images, labels, indices=indices)


__all__ = ["is_spec", "read_spec", "read_folder", "read_npz", "LabelledArrays", "ArraysSource",
           "KINDS", "SPLIT_SEED", "VAL_FRACTION", "TEST_FRACTION"]
