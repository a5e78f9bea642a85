"""Plain cross-entropy, Outlier Exposure (Eq. 0.3), Energy (Eq. 0.5), the BCE ablation and
LogitNorm: methods that are a loss alone.

Example:
    model.compile(optimizer, loss=OutlierExposureLoss(weight=0.5))  # or loss="oe"
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from ice_tf.losses.base import Hyperparameter, OODLoss, _check_weight, weight_hyperparameter


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
