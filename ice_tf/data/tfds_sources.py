"""TensorFlow Datasets sources, with a fast, explicit failure on machines that are offline.

`tfds.load(..., download=True)` on a machine without internet retries for minutes before it
fails; with `download=False` and no prepared data it fails at once with an AssertionError.
`TfdsSource` uses `download=False` unless asked otherwise and turns that AssertionError into a
`FileNotFoundError` that says where it looked and how to prepare the data.

Images are shuffled while still encoded (PNG/JPEG bytes, `tfds.decode.SkipDecoding`) and
decoded afterwards, so a shuffle buffer of large images (Places365 is 256x256) stays small.
"""

from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_datasets as tfds

from ice_tf.data.sources import AUTOTUNE, Examples, count_examples

# Largest shuffle buffer, in encoded images (CIFAR's 50,000 training images fit whole).
SHUFFLE_BUFFER = 50_000


def default_data_dir():
    """Where TFDS looks when no data_dir is given (`$TFDS_DATA_DIR` or ~/tensorflow_datasets).

    Example:
      default_data_dir()  # $TFDS_DATA_DIR or ~/tensorflow_datasets
    """
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(tfds.core.constants.DATA_DIR)


def not_prepared_message(tfds_name, data_dir, dataset_name):
    """The error text for a TFDS dataset that is not prepared under data_dir.

    Example:
      raise FileNotFoundError(not_prepared_message("svhn_cropped", None, "svhn"))
    """
    searched = data_dir or default_data_dir()
    return (
        f"Dataset {dataset_name!r} (TFDS {tfds_name!r}) is not prepared in {searched!r}, and "
        "downloading is off. Either prepare it on a machine with internet:\n"
        f"    python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{tfds_name}', data_dir='{searched}').download_and_prepare()\"\n"
        "then copy that data_dir here and pass it as data_dir (scripts: --data_dir); "
        "or allow downloading with download=True (scripts: --download)."
    )


class TfdsSource:
    """One TFDS dataset, with our split names mapped to TFDS split expressions.

    Example: `TfdsSource("dtd", {"test": "train+validation+test"}, channels=3)` reads all
    5,640 DTD images as one split.
    """

    def __init__(self, tfds_name, splits, *, channels, image_shape=None, has_labels=True):
        self.tfds_name = tfds_name
        self.splits = dict(splits)
        self.channels = channels
        self.image_shape = image_shape
        self.has_labels = has_labels

    def _load(self, split, options, *, dataset_name, encoded, shuffle_files=False,
              shuffle_seed=None, reshuffle_files=False):
        read_config = tfds.ReadConfig(
            shuffle_seed=shuffle_seed,
            shuffle_reshuffle_each_iteration=reshuffle_files if shuffle_files else None,
        )
        try:
            return tfds.load(
                self.tfds_name,
                split=self.splits[split],
                data_dir=options.data_dir,
                download=options.download,
                shuffle_files=shuffle_files,
                read_config=read_config,
                decoders={"image": tfds.decode.SkipDecoding()} if encoded else None,
            )
        except AssertionError as error:  # tfds's way of saying "not prepared"
            raise FileNotFoundError(
                not_prepared_message(self.tfds_name, options.data_dir, dataset_name)
            ) from error

    def _pair(self, example, decode):
        image = example["image"]
        if decode:
            image = tf.io.decode_image(image, channels=self.channels, expand_animations=False)
        image = tf.ensure_shape(image, self.image_shape or (None, None, self.channels))
        if self.has_labels:
            label = tf.cast(example["label"], tf.int64)
        else:
            label = tf.constant(-1, tf.int64)
        return image, label

    def open(self, split, options, *, dataset_name):
        """`Examples` for one split. Fails at once if the data is not prepared."""
        decoded = self._load(split, options, dataset_name=dataset_name, encoded=False)
        if int(decoded.cardinality()) >= 0:
            total = int(decoded.cardinality())
        else:  # counting encoded images skips decoding them
            total = count_examples(
                self._load(split, options, dataset_name=dataset_name, encoded=True)
            )
        limit = options.limit

        def subsample(seed):
            # Files in a seeded order, then a seeded buffer: the same subset on every pass.
            encoded = self._load(split, options, dataset_name=dataset_name, encoded=True,
                                 shuffle_files=True, shuffle_seed=seed, reshuffle_files=False)
            buffer = max(1, min(total, SHUFFLE_BUFFER))
            return encoded.shuffle(buffer, seed=seed, reshuffle_each_iteration=False).take(limit)

        if limit is None or limit >= total:
            limit = None
            fixed = decoded.map(lambda example: self._pair(example, decode=False),
                                num_parallel_calls=AUTOTUNE)
            num_examples = total
        else:
            fixed = subsample(options.seed).map(lambda example: self._pair(example, decode=True),
                                                num_parallel_calls=AUTOTUNE)
            num_examples = limit

        def stream(seed, start):
            if limit is None:
                encoded = self._load(split, options, dataset_name=dataset_name, encoded=True,
                                     shuffle_files=True, shuffle_seed=seed, reshuffle_files=True)
                buffer = max(1, min(total, SHUFFLE_BUFFER))
            else:
                encoded = subsample(options.seed)
                buffer = max(1, limit)
            encoded = encoded.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
            # Skipped before decoding; the shuffle buffer still replays the skipped records.
            return encoded.skip(start).map(lambda example: self._pair(example, decode=True),
                               num_parallel_calls=AUTOTUNE)

        return Examples(fixed=fixed, num_examples=num_examples, stream_fn=stream)
