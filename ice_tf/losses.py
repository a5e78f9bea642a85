"""Training objectives: plain cross-entropy, OE, Energy, BCE, ICE, ICE⁻, LogitNorm, MixOE, DAL, VOS.

Every loss has the form

    CE(outputs_in, y) + weight * (in_term + out_term),

where `outputs` are the head's outputs (logits f of Eq. 0.1 or Gaussian scores h
of Eq. 0.11), in-distribution terms are averaged over in-distribution samples and
outlier terms over outliers (never one mean over the mixed batch), as the
reference code does. Each loss is a small serializable class; `get(name)` picks
one from the registry.

Call signature: `loss(y_true, outputs_in, outputs_out=None) -> scalar`.
`loss.terms(...)` returns the named components, which `OODModel` logs.

A method is one spec: its loss class declares the head it trains by default, the
score it is evaluated with, its display name and (from its constructor) its
hyperparameters; `spec(name)` reads them, and the config, flags, scripts, plots,
benchmark and export all take them from there. Adding a method is one class and
one `register` line:

    @keras.saving.register_keras_serializable(package="my_project")
    class SquaredOutlierLoss(ice_tf.losses.OODLoss):
        term_names = ("ce", "out_term")
        hyperparameter_specs = (ice_tf.losses.weight_hyperparameter(0.5),)
        display_name = "Squared OE"
        def extra_terms(self, labels, outputs_in, outputs_out):
            return {"out_term": tf.reduce_mean(tf.square(outputs_out))}

    ice_tf.losses.register("squared_oe", SquaredOutlierLoss)

A hyperparameter of the method's own is declared with `Hyperparameter` (flag, type,
default, bounds, help; see `OODLoss.hyperparameter_specs`); its flag then appears in
`ice-tf ... --helpshort`, and `--import=MODULE` brings the module to the command line.

Over 500 lines for a reason: every loss class is short and cites its equation, and the
classes, their hyperparameter declarations and the registry are read together.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Optional

import keras
import tensorflow as tf

from ice_tf.layers import HEADS

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
    InvalidArgumentError naming LABEL_RANGE_MARKER (inside tf.function)."""
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


@keras.saving.register_keras_serializable(package="ice_tf")
class CrossEntropyLoss(OODLoss):
    """Plain softmax cross-entropy, Eq. (0.2) (or Eq. 0.12 on a Gaussian head); no outliers.

    Example:
      model.compile(optimizer, loss=CrossEntropyLoss())  # or loss="ce"
    """

    uses_outliers = False
    display_name = "Plain"
    hyperparameter_specs = ()

    def __init__(self, name=None):
        super().__init__(weight=0.0, name=name)

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {"name": self.name}


@keras.saving.register_keras_serializable(package="ice_tf")
class OutlierExposureLoss(OODLoss):
    """Outlier Exposure, Eq. (0.3): CE + λ · mean_out CE(f(x̃), uniform).

    CE to the uniform distribution is -(1/K) Σ_c log softmax(f)_c
    = logsumexp(f) - mean_c f_c. Its gradient K·[softmax(f)_i - 1/K] (Eq. 0.6, up to
    the 1/K of the mean) raises every logit whose softmax is below 1/K.
    Default λ = 0.5 (Hendrycks et al., 2019).

    Example:
      model.compile(optimizer, loss=OutlierExposureLoss(weight=0.5))  # or loss="oe"
    """

    term_names = ("ce", "out_term")
    display_name = "OE"
    hyperparameter_specs = (weight_hyperparameter(0.5),)

    def extra_terms(self, labels, outputs_in, outputs_out):
        if outputs_out is None:
            return {}
        uniform_ce = tf.reduce_logsumexp(outputs_out, axis=-1) - tf.reduce_mean(outputs_out, axis=-1)
        return {"out_term": tf.reduce_mean(uniform_ce)}


@keras.saving.register_keras_serializable(package="ice_tf")
class EnergyLoss(OODLoss):
    """Energy-bounded fine-tuning (Liu et al., 2020), the hinge form of Eq. (0.5).

    E(x) = -logsumexp f(x) (Eq. 0.4 negated); the extra terms are
    mean_in relu(E(x) - m_in)^2 and mean_out relu(m_out - E(x̃))^2. The in-distribution
    term raises every logit (Eq. 0.8). Defaults λ = 0.1, m_in = -23, m_out = -5 (the
    CIFAR-10 values of the reference code; CIFAR-100 uses m_in = -27).

    Example:
      model.compile(optimizer, loss=EnergyLoss(margin_in=-23.0, margin_out=-5.0))
    """

    term_names = ("ce", "in_term", "out_term")
    default_score = "energy"
    display_name = "Energy"
    hyperparameter_specs = (
        weight_hyperparameter(0.1),
        Hyperparameter("margin_in", -23.0, "Energy m_in, the in-distribution energy bound (CIFAR-10 "
                       "-23, CIFAR-100 -27)."),
        Hyperparameter("margin_out", -5.0, "Energy m_out, the outlier energy bound."),
    )

    def __init__(self, weight=None, margin_in=-23.0, margin_out=-5.0, name=None):
        super().__init__(weight=weight, name=name)
        self.margin_in = float(margin_in)
        self.margin_out = float(margin_out)
        if not (math.isfinite(self.margin_in) and math.isfinite(self.margin_out)):
            raise ValueError("margin_in and margin_out must be finite numbers.")

    def extra_terms(self, labels, outputs_in, outputs_out):
        energy_in = -tf.reduce_logsumexp(outputs_in, axis=-1)
        terms = {"in_term": tf.reduce_mean(tf.square(tf.nn.relu(energy_in - self.margin_in)))}
        if outputs_out is not None:
            energy_out = -tf.reduce_logsumexp(outputs_out, axis=-1)
            terms["out_term"] = tf.reduce_mean(tf.square(tf.nn.relu(self.margin_out - energy_out)))
        return terms

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {**super().get_config(), "margin_in": self.margin_in, "margin_out": self.margin_out}


@keras.saving.register_keras_serializable(package="ice_tf")
class BinaryCrossEntropyLoss(OODLoss):
    """The BCE ablation of Table 3: ICE's terms on sigmoid(logits) instead of exp(h).

    Extra terms mean_in[-log σ(f_y(x))] + mean_out[-log(1 - σ(max_i f_i(x̃)))]; no
    contradictory gradient, but still the logit as likelihood. Default λ as `ice`.

    Example:
      model.compile(optimizer, loss=BinaryCrossEntropyLoss(weight=0.1))  # or loss="bce"
    """

    term_names = ("ce", "in_term", "out_term")
    default_score = "max_logit"
    display_name = "BCE"
    hyperparameter_specs = (weight_hyperparameter(0.03),)

    def extra_terms(self, labels, outputs_in, outputs_out):
        target = tf.gather(outputs_in, labels, axis=-1, batch_dims=1)
        # -log σ(t) = softplus(-t); -log(1 - σ(t)) = softplus(t).
        terms = {"in_term": tf.reduce_mean(tf.nn.softplus(-target))}
        if outputs_out is not None:
            terms["out_term"] = tf.reduce_mean(tf.nn.softplus(tf.reduce_max(outputs_out, axis=-1)))
        return terms


@keras.saving.register_keras_serializable(package="ice_tf")
class LogitNormLoss(OODLoss):
    """LogitNorm (Wei et al., ICML 2022, Eq. 5): cross-entropy on the normalised logits
    f / (τ ‖f‖), ‖f‖ + 1e-7 as in the paper's code, so that training cannot lower the loss
    by growing ‖f‖ alone; no outliers. Evaluated with MSP, as in the paper. τ = 0.04, the
    paper's CIFAR-10 value.

    Example:
      model.compile(optimizer, loss=LogitNormLoss(temperature=0.04))  # or loss="logitnorm"
    """

    uses_outliers = False
    display_name = "LogitNorm"
    hyperparameter_specs = (
        Hyperparameter("temperature", 0.04, "LogitNorm τ: the cross-entropy sees f / (τ ‖f‖).",
                       flag="logitnorm_temperature", minimum=1e-6),
    )

    def __init__(self, temperature=0.04, name=None):
        super().__init__(weight=0.0, name=name)
        self.temperature = _check_weight("temperature", temperature)
        if self.temperature <= 0:
            raise ValueError(f"LogitNorm temperature must be > 0, got {temperature}.")

    def classification_logits(self, outputs_in):
        # sqrt(‖f‖² + 1e-14): ‖f‖ + 1e-7 at f = 0, within 1e-14 elsewhere, and a finite
        # gradient at f = 0, where the gradient of ‖f‖ is 0/0.
        norms = tf.sqrt(tf.reduce_sum(tf.square(outputs_in), axis=-1, keepdims=True) + 1e-14)
        return outputs_in / (norms * self.temperature)

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {"temperature": self.temperature, "name": self.name}


def beta_sample(alpha, beta, seed):
    """One draw of Beta(alpha, beta) from a stateless seed: G_a / (G_a + G_b), G ~ Gamma.

    Example:
      beta_sample(0.1, 1.0, tf.constant([1, 7]))  # a float32 scalar in [0, 1]
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    first = tf.random.stateless_gamma([], seeds[0], alpha=alpha)
    second = tf.random.stateless_gamma([], seeds[1], alpha=beta)
    return first / tf.maximum(first + second, 1e-30)


def cutmix_box(height, width, mix_weight, seed):
    """The box (y1, y2, x1, x2) that CutMix pastes: sides sqrt(1 - mix_weight) of the image's,
    centred at a uniform pixel, clipped to the image (Yun et al., 2019; MixOE's code).

    Example:
      cutmix_box(32, 32, 0.75, tf.constant([1, 2]))  # a 16 x 16 box, or less at a border
    """
    cut = tf.sqrt(1.0 - mix_weight)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    centre = tf.random.stateless_uniform([2], seed, minval=0, maxval=2 ** 30, dtype=tf.int32)
    cy, cx = centre[0] % height, centre[1] % width
    y1 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y2 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x1 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x2 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    return y1, y2, x1, x2


@keras.saving.register_keras_serializable(package="ice_tf")
class MixOELoss(OODLoss):
    """MixOE (Zhang et al., WACV 2023): outliers mixed into in-distribution images, trained
    towards a target that mixes the label with the uniform distribution.

    For a training batch, x_mix = CutMix (a box of x̃ pasted into x, the paper's code's
    choice) or Mixup (w·x + (1 - w)·x̃) of the first n outliers into the n in-distribution
    images, w ~ Beta(α, β) once per batch (for CutMix, w is then the exact share of x's
    pixels kept). The loss is CE(f(x), y) + λ · mean CE(f(x_mix), w·onehot(y) + (1 - w)/K),
    a soft cross-entropy; with w = 0 it is OE's term (Eq. 0.3). Outlier batches not
    mixed (validation) get w = 0. Evaluated with MSP, as in the paper. Defaults are those
    of OpenOOD v1.5's CIFAR benchmark (α = 0.1, β = 1, CutMix, λ = 1).

    Example:
      model.compile(optimizer, loss=MixOELoss(operator="mixup"))  # or loss="mixoe"
    """

    term_names = ("ce", "out_term")
    display_name = "MixOE"
    hyperparameter_specs = (
        weight_hyperparameter(1.0),
        Hyperparameter("alpha", 0.1, "MixOE α of the mixing weight's Beta(α, β).",
                       flag="mixoe_alpha", minimum=1e-6),
        Hyperparameter("beta", 1.0, "MixOE β of the mixing weight's Beta(α, β).",
                       flag="mixoe_beta", minimum=1e-6),
        Hyperparameter("operator", "cutmix", "MixOE's mixing: cutmix or mixup.",
                       flag="mixoe_operator", kind=str, choices=("cutmix", "mixup")),
    )

    def __init__(self, weight=None, alpha=0.1, beta=1.0, operator="cutmix", name=None):
        super().__init__(weight=weight, name=name)
        specs = {h.argument: h for h in self.hyperparameter_specs}
        self.alpha = specs["alpha"].check(alpha)
        self.beta = specs["beta"].check(beta)
        self.operator = specs["operator"].check(operator)

    def transform_batch(self, images, labels, outliers, seed):
        count = tf.minimum(tf.shape(images)[0], tf.shape(outliers)[0])
        kept, mixed_labels = images[:count], labels[:count]
        pasted = tf.cast(outliers[:count], images.dtype)
        seeds = tf.random.experimental.stateless_split(seed, 2)
        mix_weight = beta_sample(self.alpha, self.beta, seeds[0])
        if self.operator == "mixup":
            weight = tf.cast(mix_weight, images.dtype)
            return (images, labels, weight * kept + (1 - weight) * pasted,
                    {"mix_weight": mix_weight, "mix_labels": mixed_labels})
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        y1, y2, x1, x2 = cutmix_box(height, width, mix_weight, seeds[1])
        rows = tf.logical_and(tf.range(height) >= y1, tf.range(height) < y2)
        cols = tf.logical_and(tf.range(width) >= x1, tf.range(width) < x2)
        box = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), images.dtype)[None, :, :, None]
        mixed = kept * (1 - box) + pasted * box
        # The share of x's pixels kept, as the paper's code adjusts it.
        area = tf.cast((y2 - y1) * (x2 - x1), tf.float32)
        mix_weight = 1.0 - area / tf.cast(height * width, tf.float32)
        return images, labels, mixed, {"mix_weight": mix_weight, "mix_labels": mixed_labels}

    def extra_terms(self, labels, outputs_in, outputs_out, mix_weight=None, mix_labels=None):
        if outputs_out is None:
            return {}
        log_probs = tf.nn.log_softmax(outputs_out, axis=-1)
        uniform_ce = -tf.reduce_mean(log_probs, axis=-1)
        if mix_weight is None:  # outliers not mixed: the target is uniform
            return {"out_term": tf.reduce_mean(uniform_ce)}
        label_ce = -tf.gather(log_probs, mix_labels, axis=-1, batch_dims=1)
        return {"out_term": tf.reduce_mean(mix_weight * label_ce + (1 - mix_weight) * uniform_ce)}

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "operator": self.operator}


@keras.saving.register_keras_serializable(package="ice_tf")
class DistributionalAugmentationLoss(OODLoss):
    """DAL, Distributional-Augmented OOD Learning (Wang et al., NeurIPS 2023): OE's term
    (Eq. 0.3) on outliers moved, in feature space, to the worst case within a Wasserstein
    ball around the auxiliary outliers' distribution.

    Per training batch, the outliers' features z̃ get a perturbation δ (started at
    U(0, 1e-4)), raised by `iterations` steps of δ ← δ + strength · g / ‖g‖ (each row
    normalised), g the gradient of mean CE(head(z̃ + δ), uniform) - γ · mean|δ|; the loss is
    CE(f(x), y) + λ · mean CE(head(z̃ + δ), uniform). γ, the ball's multiplier, starts at
    `gamma_start` and follows γ ← clip(γ - β (ρ - mean|δ|), 0, γ_max) after each batch; it
    is part of the run's checkpoint. Evaluated with MSP, as in the paper. Defaults: the
    paper's CIFAR-10 values (λ = 0.5, γ_max = 10, β = 0.01, ρ = 10, 10 iterations,
    strength 1, γ from 0.01; CIFAR-100 uses β = 0.005).

    Example:
      model.compile(optimizer, loss=DistributionalAugmentationLoss())  # or loss="dal"
    """

    term_names = ("ce", "out_term")
    display_name = "DAL"
    hyperparameter_specs = (
        weight_hyperparameter(0.5),
        Hyperparameter("gamma_max", 10.0, "DAL γ_max, the bound of the ball's multiplier γ.",
                       flag="dal_gamma_max", minimum=0.0),
        Hyperparameter("beta", 0.01, "DAL β, the step of γ's update (CIFAR-100: 0.005).",
                       flag="dal_beta", minimum=0.0),
        Hyperparameter("rho", 10.0, "DAL ρ, the ball's radius in mean |δ|.", flag="dal_rho",
                       minimum=0.0),
        Hyperparameter("strength", 1.0, "DAL step length of each perturbation step.",
                       flag="dal_strength", minimum=0.0),
        Hyperparameter("iterations", 10, "DAL perturbation steps per batch.",
                       flag="dal_iterations", minimum=0, kind=int),
        Hyperparameter("gamma_start", 0.01, "DAL γ at the start of training.",
                       flag="dal_gamma_start", minimum=0.0),
    )

    def __init__(self, weight=None, gamma_max=10.0, beta=0.01, rho=10.0, strength=1.0,
                 iterations=10, gamma_start=0.01, name=None):
        super().__init__(weight=weight, name=name)
        specs = {h.argument: h for h in self.hyperparameter_specs}
        self.gamma_max = specs["gamma_max"].check(gamma_max)
        self.beta = specs["beta"].check(beta)
        self.rho = specs["rho"].check(rho)
        self.strength = specs["strength"].check(strength)
        self.iterations = specs["iterations"].check(iterations)
        self.gamma_start = specs["gamma_start"].check(gamma_start)
        self.gamma = None

    def build_state(self, model=None):
        if self.gamma is None:
            # MEAN: replicas each update γ from their own batch; the mean is kept.
            self.gamma = tf.Variable(self.gamma_start, trainable=False, dtype=tf.float32,
                                     name="dal_gamma", aggregation=tf.VariableAggregation.MEAN)

    def state_variables(self):
        return [] if self.gamma is None else [self.gamma]

    def perturbation(self, head, features, seed, gamma):
        """(δ, mean|δ| of the last step) for outlier features (n, d), as the class docstring
        says; `gamma` the multiplier γ.

        Example:
          delta, radius = loss.perturbation(model.head, features_out, seed, 0.01)
        """
        base = tf.stop_gradient(tf.cast(features, tf.float32))
        delta = tf.random.stateless_uniform(tf.shape(base), seed) * 1e-4
        radius = tf.reduce_mean(tf.abs(delta))
        for _ in range(self.iterations):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                outputs = tf.cast(head(base + delta), tf.float32)
                uniform_ce = tf.reduce_mean(tf.reduce_logsumexp(outputs, axis=-1)
                                            - tf.reduce_mean(outputs, axis=-1))
                radius = tf.reduce_mean(tf.abs(delta))
                objective = uniform_ce - gamma * radius
            gradient = tape.gradient(objective, delta)
            norms = tf.sqrt(tf.reduce_sum(tf.square(gradient), axis=-1, keepdims=True))
            delta = delta + self.strength * gradient / tf.maximum(norms, 1e-12)
        return tf.stop_gradient(delta), tf.stop_gradient(radius)

    def outlier_outputs(self, head, features_out, outputs_out, seed):
        self.build_state()
        delta, radius = self.perturbation(head, features_out, seed, self.gamma)
        self.gamma.assign(tf.clip_by_value(self.gamma - self.beta * (self.rho - radius),
                                           0.0, self.gamma_max))
        return head(features_out + tf.cast(delta, features_out.dtype))

    def extra_terms(self, labels, outputs_in, outputs_out):
        if outputs_out is None:
            return {}
        uniform_ce = tf.reduce_logsumexp(outputs_out, axis=-1) - tf.reduce_mean(outputs_out, axis=-1)
        return {"out_term": tf.reduce_mean(uniform_ce)}

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {**super().get_config(), "gamma_max": self.gamma_max, "beta": self.beta,
                "rho": self.rho, "strength": self.strength, "iterations": self.iterations,
                "gamma_start": self.gamma_start}


@keras.saving.register_keras_serializable(package="ice_tf")
class VirtualOutlierLoss(OODLoss):
    """VOS, Virtual Outlier Synthesis (Du et al., ICLR 2022): outliers synthesized in feature
    space from class-conditional Gaussians of the training features; no auxiliary outliers.

    A queue keeps the last `queue_size` features of each class (inference of the current
    batch's training-mode features, detached). Once every queue is full and the step is at
    least `start_step`, each batch estimates the class means μ_k and the tied covariance
    Σ = (1/N) Σ (z - μ_y)(z - μ_y)ᵀ + 1e-4 I of the queues, draws `candidates` samples
    μ_k + L u (L Lᵀ = Σ, u ~ N(0, I)) per class and keeps the `select` least likely ones
    (largest ‖u‖, the same order as the density). The uncertainty loss is the logistic
    regression of the head's weighted energy (`VirtualOutlierHead`: log Σ_k relu(w_k) e^{f_k})
    between the batch (label 1) and the virtual outliers through the head (label 0):
    CE(f(x), y) + λ · CE_2(uncertainty logits, in / virtual). Evaluated with the energy
    score, as in the paper. Defaults: the paper's (λ = 0.1, 1,000 features per class, 10,000
    candidates, 1 selected per class); the paper starts at epoch 40 of 100, which
    `start_step` sets in steps (0: as soon as the queues are full). Trains the "vos" head.

    Example:
      model = OODModel(backbone, ice_tf.layers.make_head("vos", 10))
      model.compile(optimizer, loss=VirtualOutlierLoss())  # or loss="vos"
    """

    uses_outliers = False
    term_names = ("ce", "uncertainty_term")
    default_head = "vos"
    default_score = "energy"
    display_name = "VOS"
    hyperparameter_specs = (
        weight_hyperparameter(0.1),
        Hyperparameter("queue_size", 1000, "VOS features kept per class.",
                       flag="vos_queue_size", minimum=2, kind=int),
        Hyperparameter("candidates", 10000, "VOS samples drawn per class and batch.",
                       flag="vos_candidates", minimum=1, kind=int),
        Hyperparameter("select", 1, "VOS least likely samples kept per class.",
                       flag="vos_select", minimum=1, kind=int),
        Hyperparameter("start_step", 0, "VOS: the first training step of the uncertainty loss "
                       "(the paper: epoch 40 of 100).", flag="vos_start_step", minimum=0, kind=int),
    )

    def __init__(self, weight=None, queue_size=1000, candidates=10000, select=1, start_step=0,
                 name=None):
        super().__init__(weight=weight, name=name)
        specs = {h.argument: h for h in self.hyperparameter_specs}
        self.queue_size = specs["queue_size"].check(queue_size)
        self.candidates = specs["candidates"].check(candidates)
        self.select = specs["select"].check(select)
        if self.select > self.candidates:
            raise ValueError(f"vos_select ({select}) must be <= vos_candidates ({candidates}).")
        self.start_step = specs["start_step"].check(start_step)
        self.queue = self.filled = self.step = None

    def build_state(self, model=None):
        if self.queue is not None or model is None:
            return
        head = model.head
        if not hasattr(head, "weighted_energy"):
            raise ValueError("loss 'vos' trains the 'vos' head (ice_tf.layers.make_head('vos', K)), "
                             f"which carries its uncertainty weights; this model has {type(head).__name__}.")
        num_classes, dim = int(head.units), int(head.kernel.shape[0])
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.queue = tf.Variable(tf.zeros((num_classes, self.queue_size, dim)), trainable=False,
                                 name="vos_queue", aggregation=aggregation)
        self.filled = tf.Variable(tf.zeros((num_classes,), tf.int32), trainable=False,
                                  name="vos_filled", aggregation=aggregation)
        self.step = tf.Variable(0, trainable=False, dtype=tf.int64, name="vos_step",
                                aggregation=aggregation)

    def state_variables(self):
        return [] if self.queue is None else [self.queue, self.filled, self.step]

    def enqueue(self, features, labels):
        """Appends the batch's features to their classes' queues (the oldest leave).

        Example:
          loss.enqueue(features, labels)
        """
        features = tf.stop_gradient(tf.cast(features, tf.float32))
        num_classes = self.queue.shape[0]
        queues, filled = [], []
        for k in range(num_classes):
            mine = tf.boolean_mask(features, tf.equal(labels, k))
            queues.append(tf.concat([self.queue[k], mine], axis=0)[-self.queue_size:])
            filled.append(tf.minimum(self.filled[k] + tf.shape(mine)[0], self.queue_size))
        return tf.group(self.queue.assign(tf.stack(queues)), self.filled.assign(tf.stack(filled)))

    def virtual_outliers(self, seed):
        """(K · select, d) virtual outliers from the queues' class-conditional Gaussians.

        Example:
          loss.virtual_outliers(tf.constant([0, 1]))
        """
        queue = self.queue
        means = tf.reduce_mean(queue, axis=1)
        centred = tf.reshape(queue - means[:, None, :], (-1, queue.shape[-1]))
        covariance = (tf.matmul(centred, centred, transpose_a=True)
                      / tf.cast(tf.shape(centred)[0], tf.float32)
                      + 1e-4 * tf.eye(queue.shape[-1]))
        chol = tf.linalg.cholesky(covariance)
        outliers = []
        for k in range(queue.shape[0]):
            u = tf.random.stateless_normal((self.candidates, queue.shape[-1]),
                                           tf.random.experimental.stateless_fold_in(seed, k))
            # The least likely samples under N(μ_k, Σ) are those of largest ‖u‖.
            _, farthest = tf.math.top_k(tf.reduce_sum(tf.square(u), axis=-1), k=self.select)
            outliers.append(means[k] + tf.matmul(tf.gather(u, farthest), chol, transpose_b=True))
        return tf.concat(outliers, axis=0)

    def uncertainty(self, head, outputs_in, virtual):
        """The logistic regression's CE between the batch (1) and the virtual outliers (0).

        Example:
          loss.uncertainty(model.head, outputs_in, loss.virtual_outliers(seed))
        """
        energy = tf.concat([head.weighted_energy(outputs_in),
                            head.weighted_energy(head(tf.cast(virtual, head.compute_dtype)))], 0)
        targets = tf.concat([tf.ones(tf.shape(outputs_in)[0], tf.int32),
                             tf.zeros(tf.shape(virtual)[0], tf.int32)], 0)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=targets, logits=head.uncertainty_logits(energy)))

    def synthesize(self, head, features_in, labels, outputs_in, seed):
        if self.queue is None:
            raise RuntimeError("compile the model with loss 'vos' before training: it builds the queues.")
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        # As the reference: full queues (before this batch) start the loss; this batch's
        # features join the queues first, and the Gaussians are estimated from them.
        ready = tf.logical_and(tf.reduce_all(tf.equal(self.filled, self.queue_size)),
                               self.step >= self.start_step)
        with tf.control_dependencies([ready]):
            updates = tf.group(self.enqueue(features_in, labels), self.step.assign_add(1))
        with tf.control_dependencies([updates]):
            term = tf.cond(ready,
                           lambda: self.uncertainty(head, outputs_in, self.virtual_outliers(seed)),
                           lambda: tf.constant(0.0))
        return {"uncertainty": term}

    def extra_terms(self, labels, outputs_in, outputs_out, uncertainty=None):
        return {} if uncertainty is None else {"uncertainty_term": uncertainty}

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {**super().get_config(), "queue_size": self.queue_size,
                "candidates": self.candidates, "select": self.select,
                "start_step": self.start_step}


def ice_outlier_term(outputs_out):
    """mean_out -log(1 - exp(max_i h_i(z̃))), Eq. (0.13), with max h clamped to <= -1e-6."""
    max_h = tf.minimum(tf.reduce_max(outputs_out, axis=-1), -_MAX_H_CLAMP)
    return tf.reduce_mean(-log1mexp(max_h))


@keras.saving.register_keras_serializable(package="ice_tf")
class InDistributionCompatibleLoss(OODLoss):
    """ICE, Eq. (0.15): CE(h(x), y) + λ · (mean_in[-h_y(x)] + mean_out[-log(1 - exp(max_i h_i(x̃)))]).

    The in-distribution term is Eq. (0.14), the outlier term Eq. (0.13). Meant for the
    Gaussian head (h <= 0); on logits the outlier term is undefined for max f > 0 and
    is clamped. Gradients: the outlier term only lowers the maximal h; the in-distribution
    terms only raise h_y and lower the other classes.

    Default λ = 0.03, chosen on the embedded benchmark's validation split (docs/design.md, "Choosing ICE's λ").
    `in_term_weight` a and `out_term_weight` b weigh the two terms apart,
    CE + λ·(a·mean_in[-h_y] + b·mean_out[...]); the paper's ICE is a = b = 1.

    Example:
      model.compile(optimizer, loss=InDistributionCompatibleLoss(weight=0.01))  # or loss="ice"
      InDistributionCompatibleLoss(out_term_weight=0.0)  # the in-distribution term alone
    """

    term_names = ("ce", "in_term", "out_term")
    default_head = "gaussian"
    default_score = "ice"
    display_name = "ICE"
    hyperparameter_specs = (
        weight_hyperparameter(0.03),
        Hyperparameter("in_term_weight", 1.0, "ICE: relative weight a of the in-distribution term, "
                       "CE + λ·(a·in_term + b·out_term); the paper's a = 1.", minimum=0.0),
        Hyperparameter("out_term_weight", 1.0, "ICE, ICE⁻: relative weight b of the outlier term; "
                       "the paper's b = 1; 0 leaves the in-distribution term alone.", minimum=0.0),
    )

    def __init__(self, weight=None, in_term_weight=1.0, out_term_weight=1.0, name=None):
        super().__init__(weight=weight, name=name)
        # Relative weights a, b of the two terms: CE + λ·(a·in_term + b·out_term). The paper's
        # ICE is a = b = 1; a = 0 is ICE⁻, b = 0 the in-distribution term alone.
        self.in_term_weight = _check_weight("in_term_weight", in_term_weight)
        self.out_term_weight = _check_weight("out_term_weight", out_term_weight)

    def extra_terms(self, labels, outputs_in, outputs_out):
        target = tf.gather(outputs_in, labels, axis=-1, batch_dims=1)
        terms = {"in_term": tf.reduce_mean(-target)}
        if outputs_out is not None:
            terms["out_term"] = ice_outlier_term(outputs_out)
        return terms

    def term_weight(self, name):
        """a for the in-distribution term, b for the outlier term: CE + λ·(a·in + b·out),
        Eq. (0.15) with a = b = 1."""
        return {"in_term": self.in_term_weight, "out_term": self.out_term_weight}[name]

    def get_config(self):
        return {**super().get_config(), "in_term_weight": self.in_term_weight,
                "out_term_weight": self.out_term_weight}


@keras.saving.register_keras_serializable(package="ice_tf")
class IceMinusLoss(InDistributionCompatibleLoss):
    """ICE⁻ (Table 3): ICE without the in-distribution term -h_y of Eq. (0.14).

    Example:
      model.compile(optimizer, loss=IceMinusLoss())  # or loss="ice_minus"
    """

    term_names = ("ce", "out_term")
    display_name = "ICE⁻"
    hyperparameter_specs = tuple(h for h in InDistributionCompatibleLoss.hyperparameter_specs
                                 if h.argument != "in_term_weight")

    def __init__(self, weight=None, out_term_weight=1.0, name=None):
        super().__init__(weight=weight, in_term_weight=0.0, out_term_weight=out_term_weight,
                         name=name)

    def get_config(self):
        config = super().get_config()
        del config["in_term_weight"]
        return config

    def extra_terms(self, labels, outputs_in, outputs_out):
        return {} if outputs_out is None else {"out_term": ice_outlier_term(outputs_out)}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What a registered method needs, read from its loss class.

    Attributes:
      name: the registry name (`--loss`).
      loss_class: the `OODLoss` subclass.
      display_name: its name in tables and figures.
      default_head: "linear" (Eq. 0.1) or "gaussian" (Eq. 0.11).
      default_score: the `ice_tf.scores` name it is evaluated with.
      uses_outliers: whether it trains on auxiliary outliers.
      hyperparameters: {argument: default} of its hyperparameters (read-only).
      term_names: the loss components it reports.
      hyperparameter_specs: its `Hyperparameter`s (flag, type, bounds, help).

    Example:
      spec("energy").hyperparameters  # {"weight": 0.1, "margin_in": -23.0, "margin_out": -5.0}
    """

    name: str
    loss_class: type
    display_name: str
    default_head: str
    default_score: str
    uses_outliers: bool
    hyperparameters: types.MappingProxyType
    term_names: tuple
    hyperparameter_specs: tuple = ()


LOSSES = {}
_REVERSE_REGISTRY = {}


def register(name, loss_class):
    """Adds a method to the registry: `get(name)`, the config, flags and scripts then know it.

    Example:
      ice_tf.losses.register("squared_oe", SquaredOutlierLoss)  # see the module docstring
    """
    from ice_tf import scores  # light: the score functions only

    if not (isinstance(loss_class, type) and issubclass(loss_class, OODLoss)):
        raise TypeError(f"register({name!r}, ...) takes an OODLoss subclass, got {loss_class!r}.")
    if loss_class.default_head not in HEADS:
        raise ValueError(
            f"{loss_class.__name__}.default_head must be one of {', '.join(HEADS)}; "
            f"got {loss_class.default_head!r}."
        )
    if loss_class.default_score not in scores.names():
        raise ValueError(
            f"{loss_class.__name__}.default_score must be one of {', '.join(scores.names())}; "
            f"got {loss_class.default_score!r}."
        )
    declared = loss_class.declared_hyperparameters()
    arguments = {h.argument for h in declared}
    if len(arguments) != len(declared):
        raise ValueError(f"{loss_class.__name__} declares a hyperparameter twice.")
    for hyperparameter in declared:
        for other, other_class in LOSSES.items():
            known = next((h for h in other_class.declared_hyperparameters()
                          if h.flag_name == hyperparameter.flag_name), None)
            if other != name and known is not None and known.kind is not hyperparameter.kind:
                raise ValueError(
                    f"{loss_class.__name__}: flag --{hyperparameter.flag_name} is {known.kind.__name__} "
                    f"for loss {other!r}; give the hyperparameter another flag= name.")
    LOSSES[name] = loss_class
    _REVERSE_REGISTRY[loss_class] = name
    return loss_class


for _name, _class in (
    ("ce", CrossEntropyLoss),
    ("oe", OutlierExposureLoss),
    ("energy", EnergyLoss),
    ("bce", BinaryCrossEntropyLoss),
    ("ice", InDistributionCompatibleLoss),
    ("ice_minus", IceMinusLoss),
    ("logitnorm", LogitNormLoss),
    ("mixoe", MixOELoss),
    ("dal", DistributionalAugmentationLoss),
    ("vos", VirtualOutlierLoss),
):
    register(_name, _class)


def names():
    """The registered loss names.

    Example:
      names()  # ['bce', 'ce', 'energy', 'ice', 'ice_minus', 'oe']
    """
    return sorted(LOSSES)


def spec(name):
    """The `MethodSpec` of a registered method.

    Example:
      ice_tf.losses.spec("energy").default_score  # 'energy'
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid losses: {', '.join(names())}.")
    loss_class = LOSSES[name]
    return MethodSpec(
        name=name,
        loss_class=loss_class,
        display_name=loss_class.display_name or name,
        default_head=loss_class.default_head,
        default_score=loss_class.default_score,
        uses_outliers=loss_class.uses_outliers,
        hyperparameters=types.MappingProxyType(loss_class.hyperparameters()),
        term_names=tuple(loss_class.term_names),
        hyperparameter_specs=loss_class.declared_hyperparameters(),
    )


def hyperparameter_flags():
    """{flag: [(method, Hyperparameter), ...]} over every registered method: the
    hyperparameter flags of the config and the command line.

    Example:
      sorted(hyperparameter_flags())
      # ['in_term_weight', 'loss_weight', 'margin_in', 'margin_out', 'out_term_weight']
    """
    found = {}
    for name in names():
        for hyperparameter in LOSSES[name].declared_hyperparameters():
            found.setdefault(hyperparameter.flag_name, []).append((name, hyperparameter))
    return found


def display_name(name):
    """A method's display name; an unregistered name (e.g. a variant label) is returned as is.

    Example:
      display_name("ice_minus")  # 'ICE⁻'
    """
    return spec(name).display_name if name in LOSSES else name


def get(identifier, **kwargs):
    """Returns a loss from a name (with constructor kwargs) or passes an `OODLoss` through.

    Example:
      loss = ice_tf.losses.get("energy", margin_in=-27.0)
    """
    if isinstance(identifier, OODLoss):
        if kwargs:
            raise ValueError("kwargs can only be given together with a loss name.")
        return identifier
    if isinstance(identifier, str) and identifier in LOSSES:
        return LOSSES[identifier](**kwargs)
    raise ValueError(f"Unknown loss {identifier!r}; valid losses: {', '.join(names())}.")


__all__ = [
    "OODLoss",
    "CrossEntropyLoss",
    "OutlierExposureLoss",
    "EnergyLoss",
    "BinaryCrossEntropyLoss",
    "InDistributionCompatibleLoss",
    "IceMinusLoss",
    "LogitNormLoss",
    "LOSSES",
    "MethodSpec",
    "Hyperparameter",
    "weight_hyperparameter",
    "hyperparameter_flags",
    "HEADS",
    "get",
    "names",
    "spec",
    "register",
    "display_name",
    "log1mexp",
]
