"""Datasets read from the user's own files: image folders, `.npy` arrays, 80M Tiny Images.

These sets are not in TFDS (iSUN, LSUN-C, LSUN-R as distributed with ODIN; 300K Random Images;
the withdrawn 80 Million Tiny Images), so the user passes their location as `path`. Every image
is labelled -1. None of these files has splits: "train" and "test" both read all of it.

Tiny Images format (the `tiny_images.bin` that Outlier Exposure reads): 79,302,017 records of
3,072 bytes, one per 32x32 RGB image, with no header. Within a record the bytes are in
column-major (Fortran) order of a (row, column, channel) array:

    byte[channel * 1024 + column * 32 + row] = image[row, column, channel]

i.e. `np.frombuffer(record, np.uint8).reshape(32, 32, 3, order="F")`. The exclusion list
(Outlier Exposure's `80mn_cifar_idxs.txt`, the 132,416 Tiny Images that are also in CIFAR)
holds one index per line, counted from 1; `TinyImagesSource` subtracts 1.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from ice_tf.data.sources import (
    AUTOTUNE,
    READ_BATCH,
    Examples,
    from_arrays,
    label_gather,
    permutation_stream,
    row_gather,
    subsample_indices,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TINY_IMAGE_SHAPE = (32, 32, 3)
TINY_RECORD_BYTES = 32 * 32 * 3
# Above this many usable rows (and with no limit), Tiny Images is sampled with replacement
# instead of permuted: a permutation of 79M indices would need 0.6 GB on every pass.
PERMUTATION_MAX_ROWS = 4_000_000


# What to use instead of 80 Million Tiny Images, which its authors withdrew in 2020.
TINY_IMAGES_REPLACEMENTS = (
    "80 Million Tiny Images was withdrawn by its authors and cannot be downloaded any more; "
    "train with another outlier set: the OE authors' 300K random images "
    "(--flagfile=data/cifar10_300k or data/cifar100_300k, reading data/300K_random_images.npy), "
    "downsampled ImageNet (--outlier_dataset=imagenet32 --outlier_path= "
    "--outlier_exclude_path=), or any folder of images (--outlier_dataset=image_folder "
    "--outlier_path=DIR --outlier_exclude_path=)")


def _require_path(options, dataset_name, what, missing_hint=""):
    if not options.path:
        raise ValueError(
            f"Dataset {dataset_name!r} reads {what}: pass path=... to load/make_eval_dataset, "
            "or outlier_path=... to make_train_dataset (scripts: the dataset's path flag)."
        )
    if not os.path.exists(options.path):
        raise FileNotFoundError(f"Dataset {dataset_name!r}: {options.path!r} does not exist"
                                f"{'; ' + missing_hint if missing_hint else ''}.")
    return options.path


def list_images(folder):
    """Image files under `folder`, recursively, as sorted paths (a fixed order).

    Example:
      list_images("/data/iSUN")[:2]  # ['/data/iSUN/a.jpg', ...]
    """
    found = []
    for root, _, files in os.walk(folder):
        for file_name in files:
            if file_name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(root, file_name))
    return sorted(found)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_TAIL_BYTES = 2048  # where a complete JPEG's end-of-image marker must lie


def image_file_problem(file_path):
    """Why `file_path` is not a complete image of the type its contents claim, or None.

    Reads the first and last bytes only: a truncated PNG lacks its IEND chunk, a
    truncated JPEG its end-of-image marker, a truncated BMP the size its header gives.

    Example:
      image_file_problem("cut.jpg")  # 'cut.jpg is a truncated JPEG (no end marker)'
    """
    try:
        size = os.path.getsize(file_path)
        with open(file_path, "rb") as stream:
            head = stream.read(16)
            stream.seek(max(0, size - _TAIL_BYTES))
            tail = stream.read()
    except OSError as error:
        return f"{file_path} cannot be read ({error.strerror})"
    if size == 0:
        return f"{file_path} is empty"
    if head.startswith(_PNG_SIGNATURE):
        return None if _PNG_END in tail[-12:] else f"{file_path} is a truncated PNG (no IEND chunk)"
    if head.startswith(b"\xff\xd8"):
        return None if b"\xff\xd9" in tail else f"{file_path} is a truncated JPEG (no end marker)"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return None if tail.rstrip(b"\x00").endswith(b"\x3b") else f"{file_path} is a truncated GIF"
    if head.startswith(b"BM"):
        declared = int.from_bytes(head[2:6], "little")
        return None if size >= declared else f"{file_path} is a truncated BMP ({size} of {declared} bytes)"
    return f"{file_path} is not a PNG, JPEG, GIF or BMP image (by its contents)"


def check_image_files(folder_or_paths):
    """Problems of the image files under a folder (see `list_images`), or of a list of
    image paths, one string each naming the file and what is wrong with it; [] when every
    file looks complete.

    Example:
      check_image_files("/data/iSUN")  # ['/data/iSUN/x.jpg is a truncated JPEG (no end marker)']
    """
    paths = (list_images(folder_or_paths) if isinstance(folder_or_paths, (str, os.PathLike))
             else folder_or_paths)
    return [problem for problem in map(image_file_problem, paths) if problem]


def problems_message(problems):
    """`check_image_files`'s problems as one line: the first, how many more, and the fix.

    Example:
      problems_message(["a.png is a truncated PNG (no IEND chunk)"])
      # 'a.png is a truncated PNG (no IEND chunk); remove or re-encode it.'
    """
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{problems[0]}{more}; remove or re-encode it."


class ImageFolderSource:
    """Every image under a folder (png, jpg, bmp, gif), decoded as RGB, label -1.

    Example: `load("image_folder", "test", path="/data/iSUN")`.
    """

    def check_files(self, path):
        """`check_image_files` of the folder at `path` ([] when it is not a folder: `open`
        reports that)."""
        return check_image_files(path) if os.path.isdir(path) else []

    def open(self, split, options, *, dataset_name):
        """`Examples` of the folder's images (the source protocol of `ice_tf.data.load`)."""
        folder = _require_path(options, dataset_name, "a folder of images")
        if not os.path.isdir(folder):
            raise ValueError(f"Dataset {dataset_name!r}: {folder!r} is not a folder.")
        files = list_images(folder)
        if not files:
            raise ValueError(
                f"Dataset {dataset_name!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                f"under {folder!r}."
            )
        paths = tf.constant(files)
        indices = subsample_indices(len(files), options.limit, options.seed)

        def read(index):
            data = tf.io.read_file(tf.gather(paths, index))
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.ensure_shape(image, (None, None, 3)), tf.constant(-1, tf.int64)

        fixed = tf.data.Dataset.from_tensor_slices(indices).map(read, num_parallel_calls=AUTOTUNE)

        def stream(seed, start):
            return permutation_stream(indices, seed, start).map(read, num_parallel_calls=AUTOTUNE)

        return Examples(fixed=fixed, num_examples=len(indices), stream_fn=stream)


@contextlib.contextmanager
def npz_archive(path, what):
    """`np.load` of a .npz with a one-line error naming `what` when the file is not a
    readable archive (another format, cut short, damaged), never pickle advice or a
    bare BadZipFile.

    Example:
      with npz_archive("mine.npz", "npz file 'mine.npz'") as archive:
          images = archive["x_train"]
    """
    unreadable = (f"{what} is not a readable .npz archive (another format, cut short or "
                  "damaged); write it again with numpy.savez")
    if not zipfile.is_zipfile(path):
        raise ValueError(unreadable + ".")
    try:
        with np.load(path, allow_pickle=False) as archive:
            yield archive
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ValueError(f"{unreadable} ({error}).") from None


def load_npy(path, what):
    """A memory-mapped `.npy` array, with a one-line error naming `what` when the file is
    not a complete .npy array (another format, cut short).

    Example:
      images = load_npy("300K_random_images.npy", "outlier_path")
    """
    with open(path, "rb") as stream:
        is_npy = stream.read(6) == b"\x93NUMPY"
    try:
        if not is_npy:
            raise ValueError("no .npy header")
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{what} {path!r} is not a readable .npy array ({error}); write it "
                         "again with numpy.save.") from None


class NpySource:
    """A `.npy` array of uint8 images, (N, H, W, C) or (N, H, W), memory-mapped; label -1.

    Example: `load("npy", "train", path="300K_random_images.npy")`.
    """

    def open(self, split, options, *, dataset_name):
        """`Examples` of the array's images (the source protocol of `ice_tf.data.load`)."""
        path = _require_path(options, dataset_name, "a .npy file of uint8 images")
        images = load_npy(path, f"Dataset {dataset_name!r}:")
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"Dataset {dataset_name!r}: {path!r} holds {images.dtype} of shape "
                f"{images.shape}; expected uint8 images (N, H, W, C) or (N, H, W)."
            )
        if images.ndim == 4 and images.shape[-1] not in (1, 3):
            raise ValueError(
                f"Dataset {dataset_name!r}: images in {path!r} have {images.shape[-1]} channels; "
                "expected 1 or 3 (channels last)."
            )
        indices = subsample_indices(len(images), options.limit, options.seed)
        return from_arrays(images, None, indices=indices)


class NpzImagesSource:
    """The images of a `.npz` (`x_test`, `x`, `images`, `test_images`, or its only array),
    uint8 (N, H, W[, C]); label -1. For OOD sets a user keeps as arrays.

    Example: `load("npz", "test", path="my_ood.npz")`.
    """

    KEYS = ("x_test", "test_images", "x", "images")

    def open(self, split, options, *, dataset_name):
        """`Examples` of the archive's images (the source protocol of `ice_tf.data.load`)."""
        path = _require_path(options, dataset_name, "a .npz of uint8 images")
        with npz_archive(path, f"Dataset {dataset_name!r}: {path!r}") as archive:
            keys = [k for k in self.KEYS if k in archive.files] or (
                archive.files if len(archive.files) == 1 else [])
            if not keys:
                raise ValueError(
                    f"Dataset {dataset_name!r}: {path!r} holds {', '.join(archive.files)}; name "
                    f"the images one of {', '.join(self.KEYS)} (or store only them).")
            images = archive[keys[0]]
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"Dataset {dataset_name!r}: {path!r} holds {images.dtype} of shape "
                f"{images.shape}; expected uint8 images (N, H, W, C) or (N, H, W).")
        indices = subsample_indices(len(images), options.limit, options.seed)
        return from_arrays(images, None, indices=indices)


def read_exclusions(path, num_rows):
    """0-based sorted unique row indices from a file of 1-based indices, one per line.

    Example:
      read_exclusions("80mn_cifar_idxs.txt", num_rows=79302017)[:3]
    """
    with open(path) as handle:
        one_based = np.array([int(line) for line in handle if line.strip()], dtype=np.int64)
    if one_based.size and one_based.min() < 1:
        raise ValueError(f"{path!r}: indices are counted from 1; found {one_based.min()}.")
    zero_based = np.unique(one_based - 1)
    return zero_based[zero_based < num_rows]


def tiny_images_reader(records):
    """Reads records `(N, 3, 32, 32)` [image, channel, column, row] as (n, 32, 32, 3) images.

    Example:
      reader = tiny_images_reader(records)
      images = reader(np.array([0, 5]))  # (2, 32, 32, 3)
    """
    return lambda indices: records[indices].transpose(0, 3, 2, 1)


def _sample_allowed(num_rows, excluded, limit, seed):
    """A seeded uniform subsample of `limit` rows that are not excluded, sorted."""
    rng = np.random.default_rng(seed)
    # Distinct draws in random order; at most len(excluded) of them can be dropped.
    drawn = rng.choice(num_rows, size=min(num_rows, limit + len(excluded)), replace=False)
    kept = drawn[~np.isin(drawn, excluded)][:limit]
    return np.sort(kept).astype(np.int64)


class TinyImagesSource:
    """Outlier Exposure's 80M Tiny Images `.bin`, memory-mapped; label -1.

    `exclude_index_path` names OE's `80mn_cifar_idxs.txt` (1-based indices) to skip.
    Without `limit`, training draws images uniformly with replacement (the set is far larger
    than any training run); with `limit`, a seeded subsample is permuted on every pass.

    Example: `load("tiny_images", "train", path="tiny_images.bin", limit=300_000)`.
    """

    def open(self, split, options, *, dataset_name):
        """`Examples` of the file's records (the source protocol of `ice_tf.data.load`)."""
        path = _require_path(options, dataset_name, "the 80M Tiny Images .bin file",
                             TINY_IMAGES_REPLACEMENTS)
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        if raw.size == 0 or raw.size % TINY_RECORD_BYTES:
            raise ValueError(
                f"Dataset {dataset_name!r}: {path!r} has {raw.size} bytes, not a positive "
                f"multiple of {TINY_RECORD_BYTES} (one 32x32x3 image per record)."
            )
        num_rows = raw.size // TINY_RECORD_BYTES
        records = raw.reshape(num_rows, 3, 32, 32)
        excluded = np.zeros(0, np.int64)
        if options.exclude_index_path:
            excluded = read_exclusions(options.exclude_index_path, num_rows)
        num_allowed = num_rows - len(excluded)
        if options.limit is not None:
            indices = _sample_allowed(num_rows, excluded, min(options.limit, num_allowed),
                                      options.seed)
        elif num_allowed <= PERMUTATION_MAX_ROWS:
            indices = np.setdiff1d(np.arange(num_rows, dtype=np.int64), excluded)
        else:
            return _sampled_examples(records, excluded)
        return from_arrays(records, None, indices=indices, reader=tiny_images_reader(records),
                           image_shape=TINY_IMAGE_SHAPE)


def _sampled_examples(records, excluded):
    """All non-excluded rows in file order, and an infinite stream sampled with replacement."""
    num_rows = len(records)
    gather_images = row_gather(records, tiny_images_reader(records), TINY_IMAGE_SHAPE)
    gather_labels = label_gather(None)
    # A sentinel above every index lets searchsorted always land on a valid position.
    excluded_sorted = tf.constant(np.append(excluded, np.iinfo(np.int64).max))

    def drop_excluded(indices):
        positions = tf.searchsorted(excluded_sorted, indices)
        return tf.boolean_mask(indices, tf.gather(excluded_sorted, positions) != indices)

    def read(indices):
        indices = drop_excluded(indices)
        return gather_images(indices), gather_labels(indices)

    fixed = (tf.data.Dataset.range(num_rows).batch(READ_BATCH)
             .map(read, num_parallel_calls=AUTOTUNE).unbatch())

    def stream(seed, start):
        draws = tf.data.Dataset.random(seed=seed).skip(start).map(
            lambda r: tf.math.floormod(r, num_rows))
        return draws.batch(READ_BATCH).map(read, num_parallel_calls=AUTOTUNE).unbatch()

    return Examples(fixed=fixed, num_examples=num_rows - len(excluded), stream_fn=stream)
