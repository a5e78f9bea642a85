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

Modules: base (`OODLoss`, `Hyperparameter`), classic (ce, oe, energy, bce, logitnorm),
ice (ice, ice_minus), synthesis (mixoe, dal, vos), registry.
"""

from ice_tf.layers import HEADS  # noqa: F401
from ice_tf.losses.base import (LABEL_RANGE_MARKER, LOSSES, Hyperparameter, OODLoss,  # noqa: F401
                                check_labels, log1mexp, weight_hyperparameter)
from ice_tf.losses.classic import (BinaryCrossEntropyLoss, CrossEntropyLoss,  # noqa: F401
                                   EnergyLoss, LogitNormLoss, OutlierExposureLoss)
from ice_tf.losses.ice import IceMinusLoss, InDistributionCompatibleLoss, ice_outlier_term  # noqa: F401
from ice_tf.losses.registry import (MethodSpec, display_name, get, hyperparameter_flags,  # noqa: F401
                                    names, register, spec)
from ice_tf.losses.synthesis import (DistributionalAugmentationLoss, MixOELoss,  # noqa: F401
                                     VirtualOutlierLoss, beta_sample, cutmix_box)

__all__ = [
    "OODLoss",
    "CrossEntropyLoss",
    "OutlierExposureLoss",
    "EnergyLoss",
    "BinaryCrossEntropyLoss",
    "InDistributionCompatibleLoss",
    "IceMinusLoss",
    "LogitNormLoss",
    "MixOELoss",
    "DistributionalAugmentationLoss",
    "VirtualOutlierLoss",
    "beta_sample",
    "cutmix_box",
    "ice_outlier_term",
    "check_labels",
    "LABEL_RANGE_MARKER",
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
