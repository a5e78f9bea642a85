"""The base of every method: `OODLoss` (CE plus weighted extra terms, and the training
loop's hooks), `Hyperparameter` declarations, label checks and log1mexp.

Example:
    class MyLoss(OODLoss):
        hyperparameter_specs = (weight_hyperparameter(0.5),)
        def extra_terms(self, labels, outputs_in, outputs_out): ...
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import tensorflow as tf


# t <= -_MAX_H_CLAMP before -log(1 - exp(t)): an outlier exactly on a class mean
# (t = 0) then costs -log(1 - exp(-1e-6)) ~ 13.8 instead of inf.
_MAX_H_CLAMP = 1e-6
_LOG_HALF = -math.log(2.0)

# Appears in the message of the in-graph label check; OODModel.fit turns the
# resulting InvalidArgumentError into a ValueError.
LABEL_RANGE_MARKER = "ice_tf: labels out of range"


def log1mexp(t):
    """log(1 - exp(t)) for t < 0, stable at both ends (Maechler, 2012).

    Uses log(-expm1(t)) for t > -ln 2 and log1p(-exp(t)) otherwise.

    Example:
      log1mexp(tf.constant([-1e-8, -30.0]))  # log(1 - exp(t)), finite at both ends
    """
    return tf.where(t > _LOG_HALF, tf.math.log(-tf.math.expm1(t)), tf.math.log1p(-tf.exp(t)))


def check_labels(labels, num_classes):
    """Returns int32 labels of shape (B,); bad labels raise ValueError (eager) or an
    InvalidArgumentError naming LABEL_RANGE_MARKER (inside tf.function).

    Example:
      check_labels(tf.constant([0, 2, 1]), num_classes=3)  # int32 [0, 2, 1]
    """
    labels = tf.reshape(labels, [-1])
    if labels.dtype.is_floating:
        labels = tf.cast(labels, tf.int64)
    labels = tf.cast(labels, tf.int32)
    if tf.executing_eagerly():
        values = labels.numpy()
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}) for a {num_classes}-class head; got "
                f"values from {values.min()} to {values.max()}. Check the dataset's number of "
                "classes or the head's num_classes."
            )
        return labels
    message = f"{LABEL_RANGE_MARKER} [0, {num_classes})"
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, num_classes, message=message),
        ]
    ):
        return tf.identity(labels)


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter a method declares: its constructor argument, command-line flag,
    type, default, bounds and help. The config, the flags, `--helpshort` and the
    validation are generated from these (`hyperparameter_flags`).

    Attributes:
      argument: the loss constructor's argument.
      default: its default (the method's paper, or as chosen on validation).
      help: one line for `--helpshort`.
      flag: the flag and config name; default: `argument`. Methods share a flag when their
        hyperparameters mean the same (λ is `loss_weight` for every method).
      minimum, maximum: inclusive bounds, or None.
      kind: float, int or str.
      choices: the allowed values of a str hyperparameter.

    Example:
      Hyperparameter("temperature", 0.04, "LogitNorm τ (Eq. 3)", minimum=1e-6)
    """

    argument: str
    default: float
    help: str = ""
    flag: Optional[str] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    kind: type = float
    choices: tuple = ()

    @property
    def flag_name(self):
        """The flag and config name (`flag`, else `argument`)."""
        return self.flag or self.argument

    def check(self, value):
        """`value` as `kind`, or a ValueError naming the flag, the bounds and the value.

        Example:
          Hyperparameter("margin_in", -23.0).check("-27")  # -27.0
        """
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"{self.flag_name} must be one of {', '.join(self.choices)}, "
                                 f"got {value!r}.")
            return str(value)
        try:
            converted = self.kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.flag_name} must be {'an integer' if self.kind is int else 'a number'}, "
                             f"got {value!r}.") from None
        if isinstance(converted, float) and not math.isfinite(converted):
            raise ValueError(f"{self.flag_name} must be a finite number, got {value!r}.")
        if self.minimum is not None and converted < self.minimum:
            raise ValueError(f"{self.flag_name} must be a finite number >= {self.minimum:g}, got {value!r}.")
        if self.maximum is not None and converted > self.maximum:
            raise ValueError(f"{self.flag_name} must be <= {self.maximum:g}, got {value!r}.")
        return converted


def weight_hyperparameter(default):
    """λ of a method, the weight of its extra terms (`loss_weight` on the command line,
    shared by every method; each class's docstring cites its equation).

    Example:
      weight_hyperparameter(0.5)  # OE's λ
    """
    return Hyperparameter("weight", default, "λ, the weight of the method's extra terms.",
                          flag="loss_weight", minimum=0.0)


def _check_weight(name, value):
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return value


class OODLoss:
    """Base class: CE on the in-distribution outputs plus weighted extra terms.

    Subclasses set `uses_outliers` and implement `extra_terms`.

    Attributes:
      weight: λ, the weight of the extra terms (Eqs. 0.3, 0.5, 0.15).
      uses_outliers: whether `outputs_out` is required.
      term_names: names of the components returned by `terms`.
      default_head: the head the method trains by default, "linear" (Eq. 0.1) or
        "gaussian" (Eq. 0.11).
      default_score: the OOD score (`ice_tf.scores`) it is evaluated with, as in its paper.
      display_name: its name in tables and figures.

    Example:
      class MyLoss(OODLoss):
          default_head, default_score = "linear", "msp"
          def extra_terms(self, labels, outputs_in, outputs_out): ...
      register("mine", MyLoss)
    """

    uses_outliers = True
    term_names = ("ce",)
    default_weight = 0.0
    default_head = "linear"
    default_score = "msp"
    display_name = None
    # The method's hyperparameters (`Hyperparameter`s); None: read from the constructor's
    # arguments and defaults, each its own flag (λ `loss_weight`), without help text.
    hyperparameter_specs = None

    @classmethod
    def declared_hyperparameters(cls):
        """The method's `Hyperparameter`s: `hyperparameter_specs`, or, for a class that
        declares none, one per constructor argument with its default.

        Example:
          [h.flag_name for h in EnergyLoss.declared_hyperparameters()]
          # ['loss_weight', 'margin_in', 'margin_out']
        """
        if cls.hyperparameter_specs is not None:
            return tuple(cls.hyperparameter_specs)
        return tuple(
            weight_hyperparameter(value) if key == "weight"
            else Hyperparameter(key, value)
            for key, value in cls().get_config().items() if key != "name")

    @classmethod
    def _default_weight(cls):
        """λ's default: the declared weight hyperparameter's, else `default_weight` (a
        class that declares none)."""
        declared = {h.argument: h.default for h in cls.hyperparameter_specs or ()}
        return declared.get("weight", cls.default_weight)

    @classmethod
    def hyperparameters(cls):
        """{argument: default} of the method's hyperparameters.

        Example:
          EnergyLoss.hyperparameters()  # {'weight': 0.1, 'margin_in': -23.0, 'margin_out': -5.0}
        """
        return {h.argument: h.default for h in cls.declared_hyperparameters()}

    def _set_hyperparameters(self, **values):
        """Sets each of `values` as an attribute, checked by its declared `Hyperparameter`
        (a ValueError naming the flag and its bounds)."""
        declared = {h.argument: h for h in self.declared_hyperparameters()}
        for argument, value in values.items():
            setattr(self, argument, declared[argument].check(value))

    def __init__(self, weight=None, name=None):
        self.weight = _check_weight("weight (lambda)", self._default_weight() if weight is None else weight)
        self.name = name or _REVERSE_REGISTRY.get(type(self), type(self).__name__)

    def extra_terms(self, labels, outputs_in, outputs_out):
        """Returns a dict of scalar terms other than "ce" (before weighting).

        `outputs_out` is None for validation batches without outliers: then only the
        in-distribution terms are returned. A method whose `transform_batch` returns a
        context receives it as keyword arguments.
        """
        return {}

    def transform_batch(self, images, labels, outliers, seed):
        """The training loop's batch hook, called on each training batch before the forward
        pass: returns (images, labels, outliers, context), where `context` is a dict passed
        to `extra_terms` as keyword arguments (the labels stay those of the images). `seed` is a stateless seed (int32 (2,): the
        model's seed and the optimizer's step), so that a resumed run draws what an
        uninterrupted one would. Default: the batch unchanged, no context.

        Example:
          images, labels, mixed, context = MixOELoss().transform_batch(x, y, x_out, seed)
        """
        return images, labels, outliers, {}

    def outlier_outputs(self, head, features_out, outputs_out, seed):
        """The training loop's feature-space hook: the head outputs the outlier term sees,
        from the outliers' features (training batches only). A method that perturbs or
        synthesizes outliers in feature space returns other outputs. Default: `outputs_out`.

        Example:
          outputs_out = loss.outlier_outputs(model.head, features_out, outputs_out, seed)
        """
        return outputs_out

    def synthesize(self, head, features_in, labels, outputs_in, seed):
        """The training loop's synthesis hook, on every training batch: a context dict (for
        `extra_terms`) computed from the in-distribution features, e.g. terms on outliers
        synthesized in feature space (VOS). Default: {}.

        Example:
          context = loss.synthesize(model.head, features_in, labels, outputs_in, seed)
        """
        return {}

    def build_state(self, model=None):
        """Creates the method's running state (non-trainable variables, e.g. DAL's γ, VOS's
        feature queues) in the current strategy's scope; `OODModel.compile` calls it with
        the model. The run's checkpoint keeps `state_variables()`. Default: none.

        Example:
          loss.build_state(model); [v.numpy() for v in loss.state_variables()]
        """

    def state_variables(self):
        """The variables `build_state` created (saved and restored with the checkpoint).

        Example:
          DistributionalAugmentationLoss().state_variables()  # [] before build_state
        """
        return []

    def terms(self, y_true, outputs_in, outputs_out=None, context=None):
        """The unweighted components, each a float32 scalar; `context` from
        `transform_batch`."""
        if self.uses_outliers and outputs_out is None:
            raise ValueError(
                f"loss {self.name!r} uses auxiliary outliers: feed the model "
                "((x, y), x_outliers) batches, or use a loss without outliers such as 'ce'."
            )
        return self._terms(y_true, outputs_in, outputs_out if self.uses_outliers else None,
                           context)

    def in_distribution_terms(self, y_true, outputs_in):
        """CE and the terms that need no outliers (for validation data `(x, y)`)."""
        return self._terms(y_true, outputs_in, None)

    def _terms(self, y_true, outputs_in, outputs_out, context=None):
        outputs_in = tf.cast(outputs_in, tf.float32)
        num_classes = outputs_in.shape[-1]
        labels = check_labels(y_true, num_classes)
        if outputs_out is not None:
            outputs_out = tf.cast(outputs_out, tf.float32)
            if outputs_out.shape[-1] is not None and outputs_out.shape[-1] != num_classes:
                raise ValueError(
                    f"outputs_in has {num_classes} classes but outputs_out has "
                    f"{outputs_out.shape[-1]}."
                )
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=self.classification_logits(outputs_in)))
        return {"ce": ce, **self.extra_terms(labels, outputs_in, outputs_out, **(context or {}))}

    def classification_logits(self, outputs_in):
        """The logits the cross-entropy term sees: the head outputs, unless a method
        reshapes them (LogitNorm normalises them).

        Example:
          LogitNormLoss(temperature=0.04).classification_logits(outputs)  # f / (τ ‖f‖)
        """
        return outputs_in

    def term_weight(self, name):
        """The relative weight of extra term `name` within λ's sum; 1 unless a loss says.

        Example:
          losses.get("ice", in_term_weight=0.3).term_weight("in_term")  # 0.3
        """
        return 1.0

    def _weighted_extras(self, terms):
        return [value if self.term_weight(key) == 1.0 else self.term_weight(key) * value
                for key, value in terms.items() if key != "ce"]

    def auxiliary(self, terms):
        """The objective without its cross-entropy: weight * (sum of the other terms, each
        times its `term_weight`); 0 when there are none. What the gradient meter measures.

        Example:
          loss.auxiliary(loss.terms(labels, outputs_in, outputs_out))
        """
        extras = self._weighted_extras(terms)
        return self.weight * tf.add_n(extras) if extras else tf.constant(0.0)

    def combine(self, terms):
        """CE + `auxiliary(terms)`: weight * (sum of the other terms, each times its `term_weight`)."""
        if not self._weighted_extras(terms):
            return terms["ce"]
        return terms["ce"] + self.auxiliary(terms)

    def __call__(self, y_true, outputs_in, outputs_out=None):
        return self.combine(self.terms(y_true, outputs_in, outputs_out))

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {"weight": self.weight, "name": self.name}

    @classmethod
    def from_config(cls, config):
        """The loss of a `get_config` dict."""
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# The registry's storage: name -> class, and class -> name (a loss's default name).
LOSSES = {}
_REVERSE_REGISTRY = {}
