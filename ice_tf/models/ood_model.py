"""OODModel: one training loop for every method (CE, OE, Energy, BCE, ICE, ICE⁻).

A model is a backbone (images -> penultimate features z), a head (linear, Eq. 0.1,
or Gaussian, Eq. 0.11) and, at compile time, a loss from `ice_tf.losses`.
`train_step` takes `((x, y), x_outliers)` batches (or `(x, y)` for losses without
outliers) and meets BatchNorm as `compile(outlier_batchnorm=...)` says: "joint", one
forward pass over the concatenation of in-distribution images and outliers, as the
reference code does (the default for a linear head); "separate", the outliers in a
pass of their own with their own batch statistics (the default for a Gaussian head);
or "frozen". The outputs are split for the loss.

Over 500 lines for a reason: `OODModel` is one Keras class, and its training step,
compile options, conversion entry point and serialization belong together.

Example:
  backbone = ice_tf.backbones.get("small_cnn", (28, 28, 1))
  model = OODModel(backbone, ice_tf.layers.GaussianLayer(10))
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True), loss="ice")
  model.fit(tf.data.Dataset.zip((in_ds, outlier_ds)), epochs=10)
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from ice_tf import distribute
from ice_tf import layers as layers_lib
from ice_tf import losses as losses_lib
from ice_tf.models.checks import (NONFINITE_LOG, _check_dataset_batches, _check_integer_labels,
                                  _check_normalization, _check_outlier_stream_length,
                                  _DivergenceGuard, _label_errors_as_value_errors, _nonfinite_code,
                                  _TrackerTable, unpack_batch)
from ice_tf.models.convert import classifier_parts, load_model_file, model_file_input_shape
from ice_tf.models.head_fit import FINETUNE_RIDGE, fit_gaussian_head, refit_gaussian_head


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
        self.seed = 0
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
                head_learning_rate_scale=1.0, head_weight_decay=None, seed=0, **kwargs):
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
          seed: the seed of a method's random batch transform (MixOE's mixing), drawn
            statelessly from (seed, step), so that a resumed run draws the same.
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
        self.ood_loss.build_state(self)  # in the caller's strategy scope, as the weights
        self.weight_decay = float(weight_decay)
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        self.head_learning_rate_scale = float(head_learning_rate_scale)
        if not self.head_learning_rate_scale >= 0:
            raise ValueError(f"head_learning_rate_scale must be >= 0, got {head_learning_rate_scale!r}.")
        self.head_weight_decay = None if head_weight_decay is None else float(head_weight_decay)
        self.seed = int(seed)
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
            "seed": self.seed,
        }

    def compile_from_config(self, config):
        self.compile(
            optimizer=keras.saving.deserialize_keras_object(config["optimizer"]),
            loss=keras.saving.deserialize_keras_object(config["loss"]),
            weight_decay=config.get("weight_decay", 0.0),
            outlier_batchnorm=config.get("outlier_batchnorm", "joint"),
            head_learning_rate_scale=config.get("head_learning_rate_scale", 1.0),
            head_weight_decay=config.get("head_weight_decay"),
            seed=config.get("seed", 0),
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
        context = {}
        if training:
            step = tf.cast(self.optimizer.iterations, tf.int32)
            seed = tf.stack([tf.constant(self.seed, tf.int32), step])
        if training and outliers is not None:  # the method's batch hook (MixOE's mixing)
            images, labels, outliers, context = self.ood_loss.transform_batch(
                images, labels, outliers, seed)
        num_in = tf.shape(images)[0]
        if outliers is None:
            features_in = self.backbone(images, training=training)
            outputs_in, outputs_out = self.head(features_in), None
        elif self.outlier_batchnorm == "joint" or not training:
            batch = tf.concat([images, tf.cast(outliers, images.dtype)], axis=0)
            features = self.backbone(batch, training=training)
            outputs = self.head(features)
            outputs_in, outputs_out = outputs[:num_in], outputs[num_in:]
            features_in, features_out = features[:num_in], features[num_in:]
        else:
            features_in = self.backbone(images, training=True)
            outputs_in = self.head(features_in)
            features_out = self._outlier_features(tf.cast(outliers, images.dtype))
            outputs_out = self.head(features_out)
        if training and outputs_out is not None:  # the feature-space hook (DAL's perturbation)
            outputs_out = self.ood_loss.outlier_outputs(self.head, features_out, outputs_out, seed)
        if training:  # the synthesis hook (VOS's virtual outliers)
            context = {**context, **self.ood_loss.synthesize(self.head, features_in, labels,
                                                             outputs_in, seed)}
        terms = self.ood_loss.terms(labels, outputs_in, outputs_out, context or None)
        return labels, outputs_in, terms, self.ood_loss.combine(terms)

    def _batchnorm_moving_variables(self):
        return [v for layer in self.backbone._flatten_layers()
                if isinstance(layer, keras.layers.BatchNormalization)
                for v in (layer.moving_mean, layer.moving_variance)]

    def _outlier_features(self, outliers):
        """The outliers' features under `outlier_batchnorm` "separate" or "frozen"."""
        if self.outlier_batchnorm == "frozen":
            return self.backbone(outliers, training=False)
        moving = self._batchnorm_moving_variables()
        kept = [tf.identity(v) for v in moving]
        features = self.backbone(outliers, training=True)
        with tf.control_dependencies([features]):
            for variable, value in zip(moving, kept):  # the averages stay in-distribution
                variable.assign(value)
        return tf.identity(features)

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
                        ratio=2, ridge=FINETUNE_RIDGE, fit_batches=None, seed=0, verbose=1,
                        fit="training"):
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
          fit: "training" (the start of fine-tuning: `fit_gaussian_head`, as above) or
            "inference" (a model served without fine-tuning: `refit_gaussian_head`, the
            inference-mode features of train_data, the fit runs apply after training;
            `ridge`, `outliers` and `ratio` do not apply).

        Example:
          model = OODModel.from_classifier(classifier, (x_train, y_train), outliers=x_out)
          model.compile(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True), loss="ice")
          model.fit(ice_tf.data.with_outliers((x_train, y_train), x_out), epochs=2)
        """
        from ice_tf import data  # imported here: the data package loads TFDS

        if head not in ("gaussian", "linear"):
            raise ValueError(f"head={head!r}: use 'gaussian' or 'linear'.")
        if fit not in ("training", "inference"):
            raise ValueError(f"fit={fit!r}: use 'training' (to fine-tune) or 'inference' (to serve).")
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
        if fit == "inference":
            batches = data.batched(train_data, batch_size, seed=seed)
            if fit_batches is not None:
                batches = batches.take(fit_batches)
            refit_gaussian_head(model, batches, verbose=verbose)
            return model
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
