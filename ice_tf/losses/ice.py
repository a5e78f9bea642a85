"""ICE (Eqs. 0.13-0.15) and its ablation ICE⁻ (Table 3).

Example:
    model.compile(optimizer, loss=InDistributionCompatibleLoss(weight=0.03))  # or loss="ice"
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ice_tf.losses.base import (_MAX_H_CLAMP, Hyperparameter, OODLoss, _check_weight, log1mexp,
                                weight_hyperparameter)


def ice_outlier_term(outputs_out):
    """mean_out -log(1 - exp(max_i h_i(z̃))), Eq. (0.13), with max h clamped to <= -1e-6.

    Example:
      ice_outlier_term(model.head(features_out))  # a float32 scalar
    """
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
