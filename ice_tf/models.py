"""OODModel: one training loop for every method (CE, OE, Energy, BCE, ICE, ICE⁻).

A model is a backbone (images -> penultimate features z), a head (linear, Eq. 0.1,
or Gaussian, Eq. 0.11) and, at compile time, a loss from `ice_tf.losses`.
`train_step` takes `((x, y), x_outliers)` batches (or `(x, y)` for losses without
outliers), runs ONE forward pass over the concatenation of in-distribution images
and outliers, so that BatchNorm sees both as in the reference code, and splits
the outputs for the loss.

Example:
  backbone = ice_tf.backbones.get("small_cnn", (28, 28, 1))
  model = OODModel(backbone, ice_tf.layers.GaussianLayer(10))
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True), loss="ice")
  model.fit(tf.data.Dataset.zip((in_ds, outlier_ds)), epochs=10)
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from ice_tf import distribute
from ice_tf import layers as layers_lib
from ice_tf import losses as losses_lib


def unpack_batch(data):
    """((x, y), x_out) -> (x, y, x_out); (x, y) -> (x, y, None)."""
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
    return first, second, None


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


@keras.saving.register_keras_serializable(package="ice_tf")
class OODModel(keras.Model):
    """Backbone + head, trained with any registered OOD loss.

    Args:
      backbone: a Keras model mapping images to features (batch, d), with a known
        input shape (e.g. from `ice_tf.backbones.get`).
      head: a layer mapping features to (batch, K) outputs, e.g.
        `ice_tf.layers.make_head("gaussian", K)`.

    Tracked metrics: `loss` (the method's objective without weight decay), each
    loss term (`ce`, `in_term`, `out_term`: the unweighted means of Eqs. 0.3, 0.5,
    0.13-0.14) and in-distribution `accuracy`.
    """

    def __init__(self, backbone, head, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = head
        self.ood_loss = None
        self.weight_decay = 0.0
        self._all_trackers = _TrackerTable()
        # Created here, inside the caller's strategy scope.
        self._accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._active_tracker_names = ("loss", "accuracy")
        input_shape = getattr(backbone, "input_shape", None)
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
        feature_shape = self.backbone.compute_output_shape(tuple(input_shape))
        if len(feature_shape) != 2:
            raise ValueError(
                f"the backbone must return (batch, features); it returns shape {feature_shape}."
            )
        if not self.head.built:
            self.head.build(feature_shape)
        # A symbolic call checks the head's input spec: a feature-size mismatch is a ValueError.
        feature_dtype = getattr(getattr(self.backbone, "output", None), "dtype", "float32")
        self.head(keras.KerasTensor(feature_shape, dtype=feature_dtype))
        self.built = True

    def call(self, inputs, training=False):
        return self.head(self.backbone(inputs, training=training))

    def features(self, images, training=False):
        """Penultimate features z (batch, d)."""
        return self.backbone(images, training=training)

    # ----------------------------------------------------------------- compile
    def compile(self, optimizer="sgd", loss="ce", weight_decay=0.0, **kwargs):
        """Configures training.

        Args:
          optimizer: a Keras optimizer or its name.
          loss: a loss name from `ice_tf.losses.names()` or an `OODLoss`.
          weight_decay: L2 coefficient, added to the gradient as wd * w like PyTorch's
            SGD weight_decay (the reference code uses 5e-4). It applies to the backbone
            and a linear head, not to the Gaussian head's means and scale.
          **kwargs: passed to `keras.Model.compile` (e.g. `steps_per_execution`).
        """
        if kwargs.get("loss") is not None or kwargs.get("metrics"):
            raise ValueError("OODModel tracks its own loss terms and accuracy; pass `loss=` only.")
        self.ood_loss = losses_lib.get(loss)
        self.weight_decay = float(weight_decay)
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
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
        }

    def compile_from_config(self, config):
        self.compile(
            optimizer=keras.saving.deserialize_keras_object(config["optimizer"]),
            loss=keras.saving.deserialize_keras_object(config["loss"]),
            weight_decay=config.get("weight_decay", 0.0),
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
    def _decayed_variables(self):
        excluded = {id(v) for v in self.head.trainable_variables} if self.gaussian_head else set()
        return [v for v in self.trainable_variables if id(v) not in excluded]

    def _forward_and_loss(self, data, training):
        if self.ood_loss is None:
            raise RuntimeError("compile the model with a loss before training or evaluating it.")
        images, labels, outliers = unpack_batch(data)
        if not self.ood_loss.uses_outliers:
            outliers = None  # plain training never looks at the outliers.
        num_in = tf.shape(images)[0]
        if outliers is None:
            outputs = self(images, training=training)
            outputs_in, outputs_out = outputs, None
        else:
            batch = tf.concat([images, tf.cast(outliers, images.dtype)], axis=0)
            outputs = self(batch, training=training)
            outputs_in, outputs_out = outputs[:num_in], outputs[num_in:]
        terms = self.ood_loss.terms(labels, outputs_in, outputs_out)
        return labels, outputs_in, terms, self.ood_loss.combine(terms)

    def _update_trackers(self, labels, outputs_in, terms, loss):
        self._trackers["loss"].update_state(loss)
        for name, value in terms.items():
            self._trackers[name].update_state(value)
        self._trackers["accuracy"].update_state(tf.reshape(labels, [-1]), outputs_in)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            labels, outputs_in, terms, loss = self._forward_and_loss(data, training=True)
            objective = loss
            decayed = self._decayed_variables()
            if self.weight_decay and decayed:  # nothing to decay when only the head trains
                penalty = tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
                objective += 0.5 * self.weight_decay * penalty
            if self.losses:
                objective += tf.add_n(self.losses)
            scaled = self.optimizer.scale_loss(distribute.scale_for_replicas(objective))
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_trackers(labels, outputs_in, terms, loss)

    def test_step(self, data):
        labels, outputs_in, terms, loss = self._forward_and_loss(data, training=False)
        return self._update_trackers(labels, outputs_in, terms, loss)

    def fit(self, x=None, *args, **kwargs):
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself.
        with _label_errors_as_value_errors():
            return super().fit(x, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with _label_errors_as_value_errors():
            return super().evaluate(*args, **kwargs)

    # ----------------------------------------------------------- serialization
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "head": keras.saving.serialize_keras_object(self.head),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        head = keras.saving.deserialize_keras_object(config.pop("head"))
        return cls(backbone, head, **config)


def build_model(backbone, input_shape, num_classes, head="linear", strategy=None, **backbone_kwargs):
    """Builds an `OODModel` by names, inside `strategy.scope()`.

    With a strategy of several replicas the backbone gets synchronized BatchNorm,
    so that batch statistics and moving averages agree across replicas.

    Args:
      backbone: a name from `ice_tf.backbones.names()`.
      input_shape: (H, W, C).
      num_classes: K.
      head: "linear" or "gaussian".
      strategy: a `tf.distribute.Strategy`; the current one if None.
      **backbone_kwargs: architecture options (e.g. `dropout_rate`).
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
        return OODModel(network, layers_lib.make_head(head, num_classes), name=f"{backbone}_{head}")


__all__ = ["OODModel", "build_model"]
