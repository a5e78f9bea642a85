"""OODModel: one training loop for every method (CE, OE, Energy, BCE, ICE, ICE⁻).

A model is a backbone (images -> penultimate features z), a head (linear, Eq. 0.1,
or Gaussian, Eq. 0.11) and, at compile time, a loss from `ice_tf.losses`.
`train_step` takes `((x, y), x_outliers)` batches (or `(x, y)` for losses without
outliers) and meets BatchNorm as `compile(outlier_batchnorm=...)` says: "joint", one
forward pass over the concatenation of in-distribution images and outliers, as the
reference code does (the default for a linear head); "separate", the outliers in a
pass of their own with their own batch statistics (the default for a Gaussian head);
or "frozen". The outputs are split for the loss.

Example:
  backbone = ice_tf.backbones.get("small_cnn", (28, 28, 1))
  model = OODModel(backbone, ice_tf.layers.GaussianLayer(10))
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True), loss="ice")
  model.fit(tf.data.Dataset.zip((in_ds, outlier_ds)), epochs=10)
"""

from __future__ import annotations

import functools
import os

import contextlib
import math
import warnings
import zipfile

import keras
import numpy as np
import tensorflow as tf

from ice_tf import distribute
from ice_tf import layers as layers_lib
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


# Covariance ridge of the fine-tune head fit, relative to the mean variance: with 1%
# or 10%, fine-tuning ICE from a barely trained model diverged (docs/design.md).
FINETUNE_RIDGE = 1.0

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


@contextlib.contextmanager
def moving_statistics_kept(model):
    """Within the block, training-mode calls of `model.backbone` leave its non-trainable
    state (BatchNorm's moving averages) as it was: it is put back on exit (eager code).

    Example:
      with moving_statistics_kept(model):
          features = model.features(images, training=True)
    """
    variables = model.backbone.non_trainable_variables
    saved = [variable.numpy() for variable in variables]
    try:
        yield
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def fit_gaussian_head(model, train_dataset, num_batches=None, ridge=FINETUNE_RIDGE, verbose=1,
                      means_only=False):
    """Fits the Gaussian head (Eq. 0.11) to the features fine-tuning will train on.

    The features are those of the training batches with BatchNorm in training mode, as
    `OODModel.train_step` computes them: under `outlier_batchnorm="joint"` normalised with
    the statistics of in-distribution images *and* outliers together, otherwise with
    those of the in-distribution images alone. A plain model's eval-mode
    features differ from these by several standard deviations once outliers enter
    the batch, and a head fitted to them started fine-tuning at -h_y ~ 4d. The
    BatchNorm moving statistics are restored afterwards. Means and tied covariance
    are the GDA estimate with a `ridge`, and the scale of L is then fitted by
    cross-entropy (`GaussianLayer.initialize_from_features`).

    Args:
      model: an `OODModel` with a Gaussian head.
      train_dataset: batches `((x, y), x_outliers)` or `(x, y)`, as training sees them.
      num_batches: how many batches to use; None: the whole (finite) dataset.
      ridge: added to the covariance, relative to its mean variance (docs/design.md).
      means_only: only the means, to the class means; L is left as it is.

    Example:
      fit_gaussian_head(model, ice_tf.data.with_outliers((x, y), x_out), num_batches=50)
    """
    progbar = keras.utils.Progbar(num_batches, unit_name="batch") if verbose else None
    features, labels = [], []
    with moving_statistics_kept(model):
        for batch in (train_dataset if num_batches is None else train_dataset.take(num_batches)):
            images, batch_labels, outliers = unpack_batch(batch)
            if getattr(model, "outlier_batchnorm", "joint") != "joint":
                outliers = None  # training normalises the in-distribution images on their own
            inputs = images if outliers is None else tf.concat(
                [images, tf.cast(outliers, images.dtype)], 0)
            batch_features = model.features(inputs, training=True)[: tf.shape(images)[0]]
            features.append(np.asarray(batch_features, np.float64))
            labels.append(np.asarray(batch_labels).reshape(-1))
            if progbar is not None:
                progbar.add(1)
    if not features:
        raise ValueError("the dataset for the Gaussian head's fit yielded no batches.")
    model.head.initialize_from_features(
        np.concatenate(features), np.concatenate(labels), ridge=ridge, calibrate_scale=True,
        min_scale=1.0,  # on separable training features CE would make h arbitrarily sharp
        means_only=means_only,
    )
    return model


@keras.saving.register_keras_serializable(package="ice_tf")
class OODModel(keras.Model):
    """Backbone + head, trained with any registered OOD loss.

    Args:
      backbone: a Keras model mapping images to features (batch, d): Sequential,
        functional or subclassed (e.g. from `ice_tf.backbones.get`).
      head: a layer mapping features to (batch, K) outputs, e.g.
        `ice_tf.layers.make_head("gaussian", K)`.
      input_shape: (H, W, C) of the images, for a backbone that does not know its own
        (a subclassed `keras.Model`); the model is then built at once.
      normalization: (mean, std) per channel in [0, 1] pixel units that the images were
        normalised with, (x / 255 - mean) / std. Recorded in the model (and its .keras
        file), so that the exported SavedModel can take raw pixels (`ice_tf.export`).

    A trained Keras classifier converts with `OODModel.from_classifier`.

    Tracked metrics: `loss` (the method's objective without weight decay), each
    loss term (`ce`, `in_term`, `out_term`: the unweighted means of Eqs. 0.3, 0.5,
    0.13-0.14) and in-distribution `accuracy`.

    Example:
      model = OODModel(ice_tf.backbones.get("small_cnn", (28, 28, 1)), GaussianLayer(10))
      model.compile(keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), loss="ice")
      model.fit(ice_tf.data.with_outliers((x, y), x_out), epochs=6)
    """

    def __init__(self, backbone, head, input_shape=None, normalization=None, **kwargs):
        super().__init__(**kwargs)
        self.normalization = _check_normalization(normalization)
        self.backbone = backbone
        self.head = head
        self.ood_loss = None
        self.weight_decay = 0.0
        self.head_learning_rate_scale, self.head_weight_decay = 1.0, None
        self.outlier_batchnorm = default_outlier_batchnorm(
            "gaussian" if layers_lib.is_gaussian_head(head) else "linear")
        self._all_trackers = _TrackerTable()
        # Created here, inside the caller's strategy scope.
        self._accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._active_tracker_names = ("loss", "accuracy")
        self._image_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        if self._image_shape is not None:
            input_shape = (None, *self._image_shape)
        else:
            try:
                input_shape = backbone.input_shape
            except (AttributeError, ValueError):  # a subclassed model has none
                input_shape = None
        if isinstance(input_shape, tuple) and all(d is not None for d in input_shape[1:]):
            # Built now, so that fit never builds it symbolically from ((x, y), x_out).
            self.build(input_shape)

    @property
    def num_classes(self):
        return self.head.num_classes if self.gaussian_head else self.head.units

    @property
    def head_kind(self):
        """"gaussian" or "linear", the word `ExperimentConfig.head_kind` uses for the same idea."""
        return "gaussian" if self.gaussian_head else "linear"

    @property
    def gaussian_head(self):
        """Whether the head is a `GaussianLayer` (its outputs are h <= 0)."""
        return layers_lib.is_gaussian_head(self.head)

    def build(self, input_shape):
        try:
            feature_shape = tuple(self.backbone.compute_output_shape(tuple(input_shape)))
        except NotImplementedError:
            # A subclassed backbone without compute_output_shape: one call on zeros builds
            # it and gives the feature size.
            probe = keras.ops.zeros((1, *input_shape[1:]))
            feature_shape = (None, *tuple(self.backbone(probe, training=False).shape[1:]))
        if len(feature_shape) != 2:
            raise ValueError(
                f"the backbone must return (batch, features); it returns shape {feature_shape}."
            )
        if not self.head.built:
            self.head.build(feature_shape)
        # A symbolic call checks the head's input spec: a feature-size mismatch is a ValueError.
        try:
            feature_dtype = self.backbone.output.dtype
        except (AttributeError, ValueError):  # subclassed: no symbolic output
            feature_dtype = "float32"
        self.head(keras.KerasTensor(feature_shape, dtype=feature_dtype))
        self.built = True

    def call(self, inputs, training=False):
        return self.head(self.backbone(inputs, training=training))

    def features(self, images, training=False):
        """Penultimate features z (batch, d)."""
        return self.backbone(images, training=training)

    # ----------------------------------------------------------------- compile
    def compile(self, optimizer="sgd", loss="ce", weight_decay=0.0, outlier_batchnorm="auto",
                head_learning_rate_scale=1.0, head_weight_decay=None, **kwargs):
        """Configures training.

        Args:
          optimizer: a Keras optimizer or its name.
          loss: a loss name from `ice_tf.losses.names()` or an `OODLoss`.
          weight_decay: L2 coefficient, added to the gradient as wd * w like PyTorch's
            SGD weight_decay (the reference code uses 5e-4). It applies to the backbone
            and a linear head, not to the Gaussian head's means and scale.
          outlier_batchnorm: how the outliers meet the backbone's BatchNorm layers
            (`OUTLIER_BATCHNORM`): "joint", one pass over the concatenated batch, so the
            batch statistics and the moving averages mix both halves (the reference code);
            "separate", a second training-mode pass for the outliers with their own batch
            statistics, the moving averages left to the in-distribution pass; "frozen", the
            outliers normalised with the moving averages (in-distribution images only);
            "auto" (default), `default_outlier_batchnorm(head)`: separate for a Gaussian
            head, which loses accuracy with joint statistics (docs/accuracy_study.md), joint
            for a linear head, as the reference code.
          head_learning_rate_scale: the head's gradients are multiplied by it; under SGD
            (with or without momentum) that is a learning rate of this multiple of the
            backbone's. 0 freezes the head.
          head_weight_decay: the head's L2 coefficient; None: `weight_decay` for a linear
            head, none for a Gaussian head.
          **kwargs: passed to `keras.Model.compile` (e.g. `steps_per_execution`).

        Example:
          model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="ice", weight_decay=5e-4)
        """
        if outlier_batchnorm not in (*OUTLIER_BATCHNORM, "auto"):
            raise ValueError(f"outlier_batchnorm={outlier_batchnorm!r}: choose one of "
                             f"{', '.join(OUTLIER_BATCHNORM)} or auto.")
        if outlier_batchnorm == "auto":
            outlier_batchnorm = default_outlier_batchnorm(self.head_kind)
        self.outlier_batchnorm = outlier_batchnorm
        if kwargs.get("loss") is not None or kwargs.get("metrics"):
            raise ValueError("OODModel tracks its own loss terms and accuracy; pass `loss=` only.")
        self.ood_loss = losses_lib.get(loss)
        self.weight_decay = float(weight_decay)
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        self.head_learning_rate_scale = float(head_learning_rate_scale)
        if not self.head_learning_rate_scale >= 0:
            raise ValueError(f"head_learning_rate_scale must be >= 0, got {head_learning_rate_scale!r}.")
        self.head_weight_decay = None if head_weight_decay is None else float(head_weight_decay)
        if self.head_weight_decay is not None and not self.head_weight_decay >= 0:
            raise ValueError(f"head_weight_decay must be >= 0, got {head_weight_decay!r}.")
        kwargs.setdefault("jit_compile", False)  # XLA is slower on CPU and fails under MirroredStrategy.
        super().compile(optimizer=optimizer, **kwargs)
        reserved = {"loss", "accuracy"} & set(self.ood_loss.term_names)
        if reserved:
            raise ValueError(f"loss term names must not be {sorted(reserved)}: the model logs those.")
        self._active_tracker_names = ("loss", *self.ood_loss.term_names, "accuracy")
        for name in self._active_tracker_names[:-1]:
            self._all_trackers[name]  # created now, inside the strategy scope of compile

    def get_compile_config(self):
        if self.ood_loss is None:
            return None
        return {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer),
            "loss": keras.saving.serialize_keras_object(self.ood_loss),
            "weight_decay": self.weight_decay,
            "outlier_batchnorm": self.outlier_batchnorm,
            "head_learning_rate_scale": self.head_learning_rate_scale,
            "head_weight_decay": self.head_weight_decay,
        }

    def compile_from_config(self, config):
        self.compile(
            optimizer=keras.saving.deserialize_keras_object(config["optimizer"]),
            loss=keras.saving.deserialize_keras_object(config["loss"]),
            weight_decay=config.get("weight_decay", 0.0),
            outlier_batchnorm=config.get("outlier_batchnorm", "joint"),
            head_learning_rate_scale=config.get("head_learning_rate_scale", 1.0),
            head_weight_decay=config.get("head_weight_decay"),
        )
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def _trackers(self):
        return {name: self._accuracy if name == "accuracy" else self._all_trackers[name]
                for name in self._active_tracker_names}

    @property
    def metrics(self):
        return list(self._trackers.values())

    # ---------------------------------------------------------------- training
    def _head_variable_ids(self):
        return {id(v) for v in self.head.trainable_variables}

    def _weight_decay_groups(self):
        """[(coefficient, variables)]: the backbone's and the head's."""
        head_ids = self._head_variable_ids()
        head_decay = self.head_weight_decay
        if head_decay is None:  # the means and scale of a Gaussian head are not decayed
            head_decay = 0.0 if self.gaussian_head else self.weight_decay
        return [
            (self.weight_decay, [v for v in self.trainable_variables if id(v) not in head_ids]),
            (head_decay, [v for v in self.trainable_variables if id(v) in head_ids]),
        ]

    def _forward_and_loss(self, data, training):
        if self.ood_loss is None:
            raise RuntimeError("compile the model with a loss before training or evaluating it.")
        images, labels, outliers = unpack_batch(data)
        if len(labels.shape) == 2 and labels.shape[-1] == self.num_classes and self.num_classes > 1:
            labels = tf.argmax(labels, axis=-1)  # one-hot labels
        if not self.ood_loss.uses_outliers:
            outliers = None  # plain training never looks at the outliers.
        elif outliers is None and not training:
            # validation_data=(x, y): the in-distribution terms and accuracy only.
            outputs = self(images, training=False)
            terms = self.ood_loss.in_distribution_terms(labels, outputs)
            return labels, outputs, terms, self.ood_loss.combine(terms)
        num_in = tf.shape(images)[0]
        if outliers is None:
            outputs = self(images, training=training)
            outputs_in, outputs_out = outputs, None
        elif self.outlier_batchnorm == "joint" or not training:
            batch = tf.concat([images, tf.cast(outliers, images.dtype)], axis=0)
            outputs = self(batch, training=training)
            outputs_in, outputs_out = outputs[:num_in], outputs[num_in:]
        else:
            outputs_in = self(images, training=True)
            outputs_out = self._outlier_pass(tf.cast(outliers, images.dtype))
        terms = self.ood_loss.terms(labels, outputs_in, outputs_out)
        return labels, outputs_in, terms, self.ood_loss.combine(terms)

    def _batchnorm_moving_variables(self):
        return [v for layer in self.backbone._flatten_layers()
                if isinstance(layer, keras.layers.BatchNormalization)
                for v in (layer.moving_mean, layer.moving_variance)]

    def _outlier_pass(self, outliers):
        """The outliers' outputs under `outlier_batchnorm` "separate" or "frozen"."""
        if self.outlier_batchnorm == "frozen":
            return self(outliers, training=False)
        moving = self._batchnorm_moving_variables()
        kept = [tf.identity(v) for v in moving]
        outputs = self(outliers, training=True)
        with tf.control_dependencies([outputs]):
            for variable, value in zip(moving, kept):  # the averages stay in-distribution
                variable.assign(value)
        return tf.identity(outputs)

    def _update_trackers(self, labels, outputs_in, terms, loss):
        self._trackers["loss"].update_state(loss)
        for name, value in terms.items():
            self._trackers[name].update_state(value)
        self._trackers["accuracy"].update_state(tf.reshape(labels, [-1]), outputs_in)
        # Only what this batch measured (a validation batch without outliers has no out_term).
        return {name: tracker.result() for name, tracker in self._trackers.items()
                if name in ("loss", "accuracy") or name in terms}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            labels, outputs_in, terms, loss = self._forward_and_loss(data, training=True)
            objective = loss
            for coefficient, decayed in self._weight_decay_groups():
                if coefficient and decayed:  # nothing to decay when only the head trains
                    penalty = tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
                    objective += 0.5 * coefficient * penalty
            if self.losses:
                objective += tf.add_n(self.losses)
            scaled = self.optimizer.scale_loss(distribute.scale_for_replicas(objective))
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if self.head_learning_rate_scale != 1.0:
            head_ids = self._head_variable_ids()
            gradients = [g * self.head_learning_rate_scale if g is not None and id(v) in head_ids
                         else g for g, v in zip(gradients, variables)]
        self.optimizer.apply_gradients(zip(gradients, variables))
        logs = self._update_trackers(labels, outputs_in, terms, loss)
        # A NaN can leave the loss finite (max and clip ops pass it by) while it
        # spreads through the weights: the inputs and the weights are checked too.
        logs[NONFINITE_LOG] = _nonfinite_code(data, self.trainable_variables
                                              + self.non_trainable_variables)
        if distribute.is_multi_worker(self.distribute_strategy):
            # Keras averages logs across workers along axis 0, which a scalar lacks.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def test_step(self, data):
        labels, outputs_in, terms, loss = self._forward_and_loss(data, training=False)
        return self._update_trackers(labels, outputs_in, terms, loss)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds from the first batch reduced over all replicas; across workers that
        # reduce is a collective that fails on nested batches. One replica's batch has the
        # shapes the build needs.
        if iterator is not None and distribute.is_multi_worker(self.distribute_strategy):
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: self.distribute_strategy.experimental_local_results(value)[0],
                    next(batches))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit` on batches `((x, y), x_outliers)` (see `ice_tf.data.with_outliers`)
        or `(x, y)`; stops with a FloatingPointError naming the remedy at a non-finite loss."""
        for name in ("sample_weight", "class_weight"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"OODModel does not weight samples: {name} would be ignored. Balance the "
                    "data instead (e.g. resample it with tf.data.Dataset.sample_from_datasets)."
                )
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself.
            _check_dataset_batches(x)
            _check_outlier_stream_length(x)
        _check_integer_labels(x, args[0] if args else kwargs.get("y"))
        self._warn_if_raw_pixels(x)
        # First, so that it takes its log out before the others see the logs.
        kwargs["callbacks"] = [_DivergenceGuard(), *(kwargs.get("callbacks") or [])]
        with _label_errors_as_value_errors():
            return super().fit(x, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with _label_errors_as_value_errors():
            return super().evaluate(*args, **kwargs)

    def _warn_if_raw_pixels(self, x):
        """Warns once when a model that records a normalisation is fed raw 0-255 pixels."""
        if self.normalization is None or getattr(self, "_warned_raw_pixels", False):
            return
        try:
            batch = next(iter(x.take(1))) if isinstance(x, tf.data.Dataset) else x
            images = unpack_batch(batch)[0]
        except (ValueError, TypeError, StopIteration, IndexError):
            return  # the training step reports malformed batches itself
        values = np.asarray(images[:256])
        if values.size and values.min() >= 0 and values.max() > 20:
            self._warned_raw_pixels = True
            mean, std = self.normalization
            warnings.warn(
                f"the images look like raw pixels (values 0 to {values.max():.0f}), but this model "
                f"takes normalised ones: use (x / 255 - {list(mean)}) / {list(std)}.", stacklevel=3)

    # ------------------------------------------------------- from a classifier
    @classmethod
    def from_classifier(cls, classifier, train_data=None, *, outliers=None, head="gaussian",
                        feature_layer=None, input_shape=None, normalization=None, batch_size=128,
                        ratio=2, ridge=FINETUNE_RIDGE, fit_batches=None, seed=0, verbose=1):
        """Turns a trained Keras classifier into an `OODModel`, weights kept.

        The classifier (Sequential, functional or subclassed, ending in a Dense layer with
        or without softmax) is split at the input of its last Dense layer (or at the
        output of `feature_layer`, a layer name or index): the part before is the
        backbone. `head="gaussian"` puts on a Gaussian head (Eq. 0.11) fitted as the
        fine-tune schedule fits it (`fit_gaussian_head`: training-mode features of the
        mixed batches, `ridge`, a cross-entropy temperature of L); `head="linear"` keeps
        the Dense layer as a linear head (Eq. 0.1) for OE or Energy fine-tuning.

        Args:
          classifier: a trained `keras.Model`.
          train_data: `(x, y)` arrays or a dataset of `(x, y)` (unbatched or batched);
            needed for the Gaussian head.
          outliers: auxiliary outlier images (array or dataset), mixed into the batches of
            the fit as training will mix them (`ice_tf.data.with_outliers`).
          head: "gaussian" or "linear".
          feature_layer: the layer whose outputs are the features (default: the input of
            the last Dense layer).
          input_shape: (H, W, C), for a classifier that does not know it.
          normalization: (mean, std) per channel, [0, 1] pixel units, that the
            classifier's inputs were normalised with; lets the export take raw pixels.
          batch_size, ratio: in-distribution batch size and outliers per in-distribution
            image of the fit's batches (the paper's 128 and 2).
          fit_batches: batches used for the fit (None: one pass over train_data).

        Example:
          model = OODModel.from_classifier(classifier, (x_train, y_train), outliers=x_out)
          model.compile(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True), loss="ice")
          model.fit(ice_tf.data.with_outliers((x_train, y_train), x_out), epochs=2)
        """
        from ice_tf import data  # imported here: the data package loads TFDS

        if head not in ("gaussian", "linear"):
            raise ValueError(f"head={head!r}: use 'gaussian' or 'linear'.")
        backbone, dense = classifier_parts(classifier, feature_layer)
        if input_shape is None:
            try:
                input_shape = tuple(classifier.input_shape[1:])
            except (AttributeError, ValueError):
                # A subclassed model that was called once records the shape it was built for.
                built_for = (classifier.get_build_config() or {}).get("input_shape")
                input_shape = tuple(built_for[1:]) if built_for else None
        if input_shape is None and train_data is not None:
            input_shape = data.image_shape_of(train_data)
        if input_shape is None:
            raise ValueError(f"{classifier.name} has no known input shape: pass input_shape=(H, W, C).")
        if head == "linear":
            if dense is None:
                raise ValueError("head='linear' keeps the classifier's last Dense layer, and "
                                 f"feature_layer={feature_layer!r} leaves none after it.")
            linear = layers_lib.make_head("linear", dense.units)
            model = cls(backbone, linear, input_shape=input_shape, normalization=normalization,
                        name=f"{classifier.name}_ood")
            kernel = dense.kernel.numpy()
            bias = dense.bias.numpy() if dense.use_bias else np.zeros(dense.units, np.float32)
            linear.set_weights([kernel, bias])
            return model
        num_classes = dense.units if dense is not None else None
        if train_data is None:
            raise ValueError("head='gaussian' is fitted to training data: pass train_data=(x, y) "
                             "or a dataset of (x, y).")
        if num_classes is None:
            num_classes = data.num_classes_of(train_data)
        model = cls(backbone, layers_lib.make_head("gaussian", num_classes),
                    input_shape=input_shape, normalization=normalization,
                    name=f"{classifier.name}_ood")
        batches = (data.with_outliers(train_data, outliers, batch_size=batch_size, ratio=ratio,
                                      seed=seed)
                   if outliers is not None else data.batched(train_data, batch_size, seed=seed))
        fit_gaussian_head(model, batches, fit_batches, ridge=ridge, verbose=verbose)
        return model

    # ----------------------------------------------------------- serialization
    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "head": keras.saving.serialize_keras_object(self.head),
        }
        if self._image_shape is not None:
            config["input_shape"] = list(self._image_shape)
        if self.normalization is not None:
            config["normalization"] = [list(self.normalization[0]), list(self.normalization[1])]
        return config

    @property
    def image_shape(self):
        """(H, W, C) of the model's input images."""
        if self._image_shape is not None:
            return self._image_shape
        return tuple(self.backbone.input_shape[1:])

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        head = keras.saving.deserialize_keras_object(config.pop("head"))
        return cls(backbone, head, **config)


# ------------------------------------------------------------ a user's classifier
def _find_layer(classifier, identifier):
    layers = classifier.layers
    if isinstance(identifier, int):
        try:
            return layers[identifier]
        except IndexError:
            raise ValueError(f"feature_layer={identifier} is out of range: the classifier has "
                             f"{len(layers)} layers.") from None
    for layer in layers:
        if layer.name == identifier:
            return layer
    raise ValueError(f"feature_layer={identifier!r} is not a layer of {classifier.name}; its layers: "
                     f"{', '.join(layer.name for layer in layers)}.")


def _last_dense(classifier):
    dense = [layer for layer in classifier.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(
            f"{classifier.name} has no Dense layer to split at: pass feature_layer= (the layer "
            "whose outputs are the features) and head='gaussian'."
        )
    return dense[-1]


@keras.saving.register_keras_serializable(package="ice_tf")
class ClassifierFeatures(keras.Model):
    """The features of a subclassed classifier: its `call` runs, and the input of its last
    Dense layer (or the output of `feature_layer`) is returned.

    A functional or Sequential classifier is cut into a plain functional model
    instead; this wrapper is for models whose graph cannot be cut. Saving it needs the
    classifier's class registered (`keras.saving.register_keras_serializable`), as
    saving the classifier itself does.

    Example:
      backbone = ClassifierFeatures(my_subclassed_classifier, layer_index=-1)
    """

    def __init__(self, classifier, layer_index, take="input", **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        # An index into classifier.layers: a subclassed model's layer names change on reload.
        self.layer_index = int(layer_index)
        self.take = take
        self._layer = _find_layer(classifier, self.layer_index)
        if take == "input":
            # The classifier's own last Dense layer runs but feeds nothing: the head
            # replaces it, so it is frozen (no gradient would reach it anyway).
            self._layer.trainable = False

    def call(self, inputs, training=False):
        captured = []
        layer, original = self._layer, self._layer.call

        def capture(*args, **kwargs):
            outputs = original(*args, **kwargs)
            captured.append(args[0] if self.take == "input" else outputs)
            return outputs

        layer.call = capture
        try:
            self.classifier(inputs, training=training)
        finally:
            del layer.call
        return captured[-1]

    def get_config(self):
        return {**super().get_config(), "classifier": keras.saving.serialize_keras_object(
            self.classifier), "layer_index": self.layer_index, "take": self.take}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        classifier = keras.saving.deserialize_keras_object(config.pop("classifier"))
        return cls(classifier, **config)


def _nested_class_model(classifier):
    """The nested Sequential or functional model that ends a graph classifier and holds
    its class layer (the last layer with weights is a model, not a Dense), or None."""
    if not _is_graph_model(classifier):
        return None
    weighted = [layer for layer in classifier.layers if layer.weights]
    if weighted and isinstance(weighted[-1], keras.Model) and _is_graph_model(weighted[-1]):
        return weighted[-1]
    return None


def _check_class_layer(classifier, dense):
    """Refuses a split at a Dense layer that does not give the classifier's outputs (the
    class layer hidden where the split cannot see it), instead of a wrong class count."""
    try:
        outputs = classifier.output_shape[-1]
    except (AttributeError, ValueError, TypeError, IndexError):
        return  # a subclassed model that does not know its output shape
    if isinstance(outputs, int) and outputs != dense.units:
        raise ValueError(
            f"the last Dense layer of {classifier.name} that ice-tf can see, {dense.name!r}, has "
            f"{dense.units} units but the classifier gives {outputs} outputs: its class layer is "
            "nested where the split cannot reach; pass feature_layer= (the layer whose outputs "
            "are the features) or build the classifier without the nesting.")


def _is_graph_model(classifier):
    return isinstance(classifier, keras.Sequential) or type(classifier).__name__ == "Functional" or (
        getattr(classifier, "_is_graph_network", False))


def classifier_parts(classifier, feature_layer=None):
    """(backbone, dense head or None) of a trained Keras classifier.

    The backbone maps images to the input of the classifier's last Dense layer (or to
    the output of `feature_layer`, a layer name or index); its weights are the
    classifier's own.

    Example:
      backbone, dense = classifier_parts(classifier)   # dense: the last Dense layer
    """
    nested = _nested_class_model(classifier) if feature_layer is None else None
    if nested is not None:
        # The class layer sits inside a nested model that ends the classifier: the features
        # are the outer layers, then the nested model's own layers up to its last Dense.
        inner_backbone, dense = classifier_parts(nested)
        features = inner_backbone(nested.input)
        return keras.Model(classifier.inputs, features, name=f"{classifier.name}_features"), dense
    dense = _last_dense(classifier) if feature_layer is None else None
    if dense is not None:
        _check_class_layer(classifier, dense)
    if feature_layer is not None:
        layer = _find_layer(classifier, feature_layer)
        last = [l for l in classifier.layers if isinstance(l, keras.layers.Dense)]
        dense = last[-1] if last and last[-1] is not layer else None
    if _is_graph_model(classifier):
        if isinstance(classifier, keras.Sequential) and not classifier.built:
            raise ValueError("build the Sequential classifier first (give it an Input or call it once).")
        outputs = dense.input if feature_layer is None else layer.output
        backbone = keras.Model(classifier.inputs, outputs, name=f"{classifier.name}_features")
    else:
        target, take = (dense, "input") if feature_layer is None else (layer, "output")
        index = next(i for i, l in enumerate(classifier.layers) if l is target)
        backbone = ClassifierFeatures(classifier, index, take, name=f"{classifier.name}_features")
    return backbone, dense


def build_model(backbone, input_shape, num_classes, head="linear", strategy=None,
                normalization=None, **backbone_kwargs):
    """Builds an `OODModel` by names, inside `strategy.scope()`.

    With a strategy of several replicas the backbone gets synchronized BatchNorm,
    so that batch statistics and moving averages agree across replicas.

    Args:
      backbone: a name from `ice_tf.backbones.names()`.
      input_shape: (H, W, C).
      num_classes: K.
      head: "linear" or "gaussian".
      strategy: a `tf.distribute.Strategy`; the current one if None.
      normalization: (mean, std) per channel the images are normalised with (`OODModel`).
      **backbone_kwargs: architecture options (e.g. `dropout_rate`).

    Example:
      model = build_model("wrn40_2", (32, 32, 3), 10, head="gaussian")
    """
    from ice_tf import backbones  # imported here: backbones import is heavy for users of losses only.

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        network = backbones.get(
            backbone,
            tuple(input_shape),
            sync_batchnorm=strategy.num_replicas_in_sync > 1,
            **backbone_kwargs,
        )
        return OODModel(network, layers_lib.make_head(head, num_classes),
                        normalization=normalization, name=f"{backbone}_{head}")


# How outliers meet BatchNorm during training (OODModel.compile's outlier_batchnorm).
OUTLIER_BATCHNORM = ("joint", "separate", "frozen")


def default_outlier_batchnorm(head_kind):
    """"separate" for a Gaussian head, "joint" for a linear one (what "auto" means).

    With joint batch statistics ICE from scratch lost 3.9 points of validation accuracy
    against plain training on the embedded benchmark (3 seeds); with separate ones 0.5,
    and its AUROC rose (docs/accuracy_study.md). The linear-head methods keep the
    reference code's joint pass.

    Example:
      default_outlier_batchnorm("gaussian")  # 'separate'
    """
    return "separate" if head_kind == "gaussian" else "joint"


def is_model_file(backbone):
    """Whether a backbone setting names a Keras model file (`PATH.keras`) rather than a
    registered backbone.

    Example:
      is_model_file("mine/classifier.keras")  # True
    """
    return str(backbone).endswith(".keras")


def read_model(path, what="model file"):
    """`keras.models.load_model(path, compile=False)` with one-line errors naming the
    file: missing, or not a readable .keras archive (cut short, damaged, another format),
    never Keras' "File not found" for a file that exists.

    Example:
      model = read_model("runs/demo/ice/seed1/model.keras")
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what} {path!r} is not a readable .keras archive (cut short, damaged or "
                         "another format); save the model again with model.save(...).")
    try:
        return keras.models.load_model(path, compile=False)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{what} {path!r} is damaged ({str(error).splitlines()[0]}); save the "
                         "model again with model.save(...).") from None


@functools.lru_cache(maxsize=4)
def _load_file(path, modified_ns):
    del modified_ns  # part of the cache key: a rewritten file is loaded again
    return read_model(path, "backbone file")


def load_model_file(path):
    """The Keras model in `path` (cached per process; uncompiled).

    Example:
      load_model_file("mine/classifier.keras").input_shape  # (None, 32, 32, 3)
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone file {path!r} does not exist; give the .keras file "
                                "of your classifier or feature extractor.")
    return _load_file(os.path.abspath(path), os.stat(path).st_mtime_ns)


def model_file_input_shape(path):
    """(H, W, C) of the images the model in `path` takes.

    Example:
      model_file_input_shape("mine/classifier.keras")  # (32, 32, 3)
    """
    model = load_model_file(path)
    try:
        shape = tuple(model.input_shape[1:])
    except (AttributeError, ValueError):
        shape = tuple(((model.get_build_config() or {}).get("input_shape") or [None])[1:])
    if len(shape) != 3 or not all(shape):
        raise ValueError(f"backbone file {path!r} takes inputs of shape {shape}; a backbone takes "
                         "images (H, W, C) of a fixed size.")
    return tuple(int(d) for d in shape)


def build_from_file(path, num_classes, head="linear", *, fresh_weights, normalization=None):
    """An `OODModel` on the network in a user's `.keras` file (`--backbone=PATH.keras`).

    A classifier, whose last Dense layer has `num_classes` units, is cut at that layer's
    input (`classifier_parts`); any other model is taken whole as the feature extractor.
    With `fresh_weights` (the scratch schedule) the network is cloned with new weights;
    without (the fine-tune schedule) it keeps its trained weights and a linear head takes
    over the Dense layer's, while a Gaussian head is to be fitted by the caller
    (`fit_gaussian_head`).

    Example:
      model = build_from_file("mine.keras", 10, "gaussian", fresh_weights=True)
    """
    network = load_model_file(path)
    shape = model_file_input_shape(path)
    try:
        backbone, dense = classifier_parts(network)
    except ValueError:
        backbone, dense = network, None
    if dense is not None and dense.units != num_classes:
        backbone, dense = network, None  # its last Dense gives features, not class scores
    if fresh_weights:
        backbone = keras.models.clone_model(backbone)
    model = OODModel(backbone, layers_lib.make_head(head, num_classes), input_shape=shape,
                     normalization=normalization, name=f"{network.name}_{head}")
    model.build((None, *shape))
    if not fresh_weights and head == "linear" and dense is not None:
        bias = dense.bias.numpy() if dense.use_bias else np.zeros(dense.units, np.float32)
        model.head.set_weights([dense.kernel.numpy(), bias])
    return model


__all__ = ["OODModel", "OUTLIER_BATCHNORM", "default_outlier_batchnorm", "moving_statistics_kept", "build_model", "build_from_file", "is_model_file", "load_model_file",
           "model_file_input_shape", "classifier_parts", "ClassifierFeatures",
           "fit_gaussian_head", "FINETUNE_RIDGE", "unpack_batch"]
