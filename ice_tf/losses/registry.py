"""The method registry: `register(name, loss_class)`, `get`, `names`, `spec` and the
hyperparameter flags generated from the classes' declarations.

Example:
    register("power_oe", PowerOutlierLoss)
    spec("energy").hyperparameters  # {"weight": 0.1, "margin_in": -23.0, "margin_out": -5.0}
"""

from __future__ import annotations

import dataclasses
import types

from ice_tf.layers import HEADS
from ice_tf.losses.base import _REVERSE_REGISTRY, LOSSES, OODLoss
from ice_tf.losses.classic import (BinaryCrossEntropyLoss, CrossEntropyLoss, EnergyLoss,
                                   LogitNormLoss, OutlierExposureLoss)
from ice_tf.losses.ice import IceMinusLoss, InDistributionCompatibleLoss
from ice_tf.losses.synthesis import DistributionalAugmentationLoss, MixOELoss, VirtualOutlierLoss


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
