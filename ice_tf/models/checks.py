"""The checks of `OODModel`'s input and training: batch layout, labels, normalisation,
and the divergence guard that stops `fit` at a non-finite loss or weight.

Example:
  images, labels, outliers = unpack_batch(((x, y), x_out))
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf

from ice_tf import losses as losses_lib


def unpack_batch(data):
    """((x, y), x_out) -> (x, y, x_out); (x, y) -> (x, y, None).

    Example:
      images, labels, outliers = unpack_batch(((x, y), x_out))
    """
    if isinstance(data, (tuple, list)) and len(data) == 1:
        data = data[0]  # fit(x=((x, y), x_out)) with arrays arrives wrapped in a 1-tuple.
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        raise ValueError(
            "OODModel expects batches ((images, labels), outlier_images) or (images, labels); "
            f"got {type(data).__name__}."
        )
    first, second = data[0], data[1]
    if isinstance(first, (tuple, list)):
        if len(first) != 2:
            raise ValueError("the in-distribution part of a batch must be (images, labels).")
        return first[0], first[1], second
    if isinstance(second, (tuple, list)):
        raise ValueError(_ZIP_ORDER_ERROR)
    return first, second, None


_ZIP_ORDER_ERROR = (
    "batches must be ((images, labels), outlier_images), in-distribution first; got "
    "(outliers, (images, labels)): zip as tf.data.Dataset.zip((in_ds, outlier_ds)), or "
    "use ice_tf.data.with_outliers."
)


def _check_outlier_stream_length(dataset):
    """A zip of a finite outlier stream shorter than the in-distribution stream would end
    the epoch early, without a word: refuse it (with_outliers repeats the outliers)."""
    try:
        inputs = dataset._inputs()  # tf.data's component datasets; not a public API
    except AttributeError:
        return
    if len(inputs) != 2 or not isinstance(dataset.element_spec[0], (tuple, list)):
        return
    in_steps, out_steps = (int(tf.data.experimental.cardinality(d)) for d in inputs)
    infinite = int(tf.data.experimental.INFINITE_CARDINALITY)
    if out_steps >= 0 and (in_steps == infinite or out_steps < in_steps):
        raise ValueError(
            f"the outlier stream has {out_steps} batches and the in-distribution stream "
            f"{'infinitely many' if in_steps == infinite else in_steps}: each epoch would end after "
            f"{out_steps} steps. Repeat the outliers (outlier_ds.repeat()) or use "
            "ice_tf.data.with_outliers."
        )


def _check_dataset_batches(dataset):
    """One-line errors for the first mistakes with a tf.data input, before any step runs."""
    spec = dataset.element_spec
    if not isinstance(spec, (tuple, list)) or len(spec) < 2:
        raise ValueError(
            "OODModel.fit expects a dataset of ((images, labels), outlier_images) or (images, "
            f"labels) batches; its elements are {spec}."
        )
    images = spec[0][0] if isinstance(spec[0], (tuple, list)) else spec[0]
    if isinstance(spec[1], (tuple, list)) and not isinstance(spec[0], (tuple, list)):
        raise ValueError(_ZIP_ORDER_ERROR)
    if images.shape.rank == 3 and images.shape[-1] in (1, 3, 4):  # (H, W, C): one image
        raise ValueError(
            f"the dataset yields single images of shape {images.shape}, not batches: batch it, "
            "e.g. dataset.batch(128), or use ice_tf.data.with_outliers(..., batch_size=128)."
        )


def _check_integer_labels(x, y=None):
    """Float labels that are not whole numbers would be cut to integers by the loss
    without a word (2.7 to 2): refused, as the command line refuses them."""
    try:
        if y is not None:
            labels = np.asarray(y)
        else:
            batch = next(iter(x.take(1))) if isinstance(x, tf.data.Dataset) else x
            labels = np.asarray(unpack_batch(batch)[1])
    except (ValueError, TypeError, StopIteration, IndexError):
        return  # the training step reports malformed batches itself
    if labels.ndim == 2 and labels.shape[-1] > 1:
        return  # one-hot rows
    if np.issubdtype(labels.dtype, np.floating):
        fractional = labels[labels != np.round(labels)]
        if fractional.size:
            raise ValueError(
                f"labels must be class indices 0..K-1 (or one-hot rows); got {fractional.flat[0]:g}, "
                "which would be cut to an integer: give integer labels.")


def _check_normalization(normalization):
    """((mean, ...), (std, ...)) as float tuples, or None; a one-line error otherwise."""
    if normalization is None:
        return None
    try:
        mean, std = normalization
        mean = tuple(float(v) for v in (mean if hasattr(mean, "__len__") else [mean]))
        std = tuple(float(v) for v in (std if hasattr(std, "__len__") else [std]))
    except (TypeError, ValueError):
        raise ValueError(
            f"normalization must be (mean, std) per channel in [0, 1] pixel units, e.g. "
            f"((0.286,), (0.353,)); got {normalization!r}."
        ) from None
    if len(mean) != len(std) or not all(s > 0 for s in std):
        raise ValueError(f"normalization needs one mean and one std > 0 per channel; got {normalization!r}.")
    return mean, std


class _TrackerTable:
    """name -> `keras.metrics.Mean`, created on first use.

    A plain object, so that Keras's attribute tracking (locked once the model is
    built) does not see it: a loss compiled later may report terms of any name.
    `OODModel.metrics` hands the active trackers to Keras.
    """

    def __init__(self):
        self._trackers = {}

    def __getitem__(self, name):
        if name not in self._trackers:
            self._trackers[name] = keras.metrics.Mean(name=name)
        return self._trackers[name]


@contextlib.contextmanager
def _label_errors_as_value_errors():
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if losses_lib.LABEL_RANGE_MARKER in str(error.message):
            raise ValueError(
                "labels lie outside [0, num_classes) of the model's head. Check the dataset's "
                f"number of classes or the head's num_classes. ({error.message.splitlines()[0]})"
            ) from None
        raise


DIVERGENCE_REMEDY = (
    "lower the learning rate, e.g. to 0.001 (the reference code's fine-tune rate; a small "
    "classifier converted by OODModel.from_classifier can diverge at 0.01)"
)


# The training step's own log of what it found not finite (`OODModel.train_step`);
# `_DivergenceGuard` takes it out of the logs before any other callback sees them.
NONFINITE_LOG = "_nonfinite"
FINITE, NONFINITE_INPUT, NONFINITE_WEIGHTS = 0, 1, 2


class _DivergenceGuard(keras.callbacks.Callback):
    """Stops `fit` at the first step with a non-finite input batch, weights or loss, with
    an error that says which and names the remedy (Keras's TerminateOnNaN stops silently,
    and only looks at the loss, which NaN weights need not make NaN)."""

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, logs, where):
        logs = logs if logs is not None else {}
        # The mean over replicas: weights are mirrored, so all replicas report them
        # (NONFINITE_WEIGHTS); anything less but above FINITE is a bad input on some.
        found = float(np.max(logs.pop(NONFINITE_LOG, FINITE)))
        loss = logs.get("loss")
        if FINITE < found < NONFINITE_WEIGHTS:
            message = (f"a training batch holds NaN or inf values ({where}): check the data, e.g. "
                       "for a corrupt image or a division by zero in preprocessing")
        elif found >= NONFINITE_WEIGHTS:
            message = f"training diverged (non-finite weights) at {where}: {DIVERGENCE_REMEDY}"
        elif loss is not None and not math.isfinite(float(loss)):
            message = f"training diverged (non-finite loss) at {where}: {DIVERGENCE_REMEDY}"
        else:
            return
        self.model.stop_training = True
        raise FloatingPointError(message + ".")

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"epoch {epoch + 1}")


def _nonfinite_code(data, variables):
    """`NONFINITE_INPUT` if a float tensor of the batch `data` is not finite, else
    `NONFINITE_WEIGHTS` if a variable is not, else `FINITE`, as a float32 scalar: Keras
    averages logs over replicas, and `_DivergenceGuard` reads that mean."""
    inputs = [tf.reduce_all(tf.math.is_finite(t)) for t in tf.nest.flatten(data)
              if tf.as_dtype(t.dtype).is_floating]
    weights = [tf.reduce_all(tf.math.is_finite(v)) for v in variables
               if tf.as_dtype(v.dtype).is_floating]
    inputs_ok = tf.reduce_all(tf.stack(inputs)) if inputs else tf.constant(True)
    weights_ok = tf.reduce_all(tf.stack(weights)) if weights else tf.constant(True)
    code = tf.where(inputs_ok, tf.where(weights_ok, FINITE, NONFINITE_WEIGHTS), NONFINITE_INPUT)
    return tf.cast(code, tf.float32)
